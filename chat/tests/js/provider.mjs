// A real OpenID Connect provider (panva's oidc-provider) for edge-chat's tests.
//
//   node provider.mjs   with env CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS (comma-separated)
//
// Listens on 127.0.0.1 on a free port and prints one line, `ready http://127.0.0.1:PORT`, once
// it serves. Any login name signs in with any password (oidc-provider's development
// interactions); the login name is the account's preferred_username. PKCE is required for
// every client. Exits when stdin closes, so a test that dies takes it along.
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: process.env.REDIRECT_URIS.split(','),
      grant_types: ['authorization_code'],
      response_types: ['code'],
    }],
    pkce: { required: () => true },
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'] },
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, preferred_username: id, name: id };
        },
      };
    },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ['edge-test-cookie-key'] },
  });
  server.on('request', provider.callback());
  console.log(`ready ${issuer}`);
});
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
