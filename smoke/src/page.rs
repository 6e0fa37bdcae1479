//! What a browser would load with a page: its scripts, stylesheets, icons and images.

use std::cell::RefCell;

use lol_html::{element, HtmlRewriter, Settings};

/// The URLs (as written) of the scripts, stylesheets, preloads, icons and images `html` loads
/// with it, in order, each once.
pub(crate) fn assets(html: &[u8]) -> Vec<String> {
    let found = RefCell::new(Vec::<String>::new());
    let push = |v: Option<String>| {
        if let Some(v) = v.map(|v| v.trim().to_string()) {
            let mut f = found.borrow_mut();
            if !v.is_empty() && !v.starts_with("data:") && !f.contains(&v) {
                f.push(v);
            }
        }
    };
    let mut rewriter = HtmlRewriter::new(
        Settings::new()
            .append_element_content_handler(element!("script[src]", |el| {
                push(el.get_attribute("src"));
                Ok(())
            }))
            .append_element_content_handler(element!("img[src]", |el| {
                push(el.get_attribute("src"));
                Ok(())
            }))
            .append_element_content_handler(element!("link[href]", |el| {
                let rel = el
                    .get_attribute("rel")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let loads = rel.split_ascii_whitespace().any(|r| {
                    matches!(
                        r,
                        "stylesheet" | "icon" | "preload" | "modulepreload" | "manifest"
                    )
                });
                if loads {
                    push(el.get_attribute("href"));
                }
                Ok(())
            })),
        |_: &[u8]| {},
    );
    // Malformed HTML is still read as a browser would; a rewriter error only stops early.
    let _ = rewriter.write(html);
    let _ = rewriter.end();
    found.into_inner()
}

/// Every URL an element of `html` names (`href`, `src`, `action`, `formaction`, `poster`), in
/// order, each once.
pub(crate) fn urls(html: &[u8]) -> Vec<String> {
    let found = RefCell::new(Vec::<String>::new());
    let mut settings = Settings::new();
    for attr in ["href", "src", "action", "formaction", "poster"] {
        let found = &found;
        settings =
            settings.append_element_content_handler(element!(format!("[{attr}]"), move |el| {
                if let Some(v) = el.get_attribute(attr) {
                    let v = v.trim().to_string();
                    let mut f = found.borrow_mut();
                    if !v.is_empty()
                        && !v.starts_with("data:")
                        && !v.starts_with('#')
                        && !f.contains(&v)
                    {
                        f.push(v);
                    }
                }
                Ok(())
            }));
    }
    let mut rewriter = HtmlRewriter::new(settings, |_: &[u8]| {});
    let _ = rewriter.write(html);
    let _ = rewriter.end();
    found.into_inner()
}

/// The `href` of every `<a>` in `html`, in order.
pub(crate) fn links(html: &[u8]) -> Vec<String> {
    let found = RefCell::new(Vec::<String>::new());
    let mut rewriter = HtmlRewriter::new(
        Settings::new().append_element_content_handler(element!("a[href]", |el| {
            if let Some(h) = el.get_attribute("href") {
                found.borrow_mut().push(h);
            }
            Ok(())
        })),
        |_: &[u8]| {},
    );
    let _ = rewriter.write(html);
    let _ = rewriter.end();
    found.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_styles_icons_and_images_are_found_once() {
        let html = br#"<!doctype html><html><head>
            <link rel="stylesheet" href="/forge/assets/app.css">
            <link rel="icon" href="/favicon.ico"><link rel="alternate" href="/feed">
            <link rel="modulepreload" href="./m.js">
            <script src="/forge/assets/app.js"></script><script>inline()</script>
            </head><body><img src="logo.png"><img src="data:image/png;base64,AAAA">
            <script src="/forge/assets/app.js"></script><a href="/elsewhere">x</a></body></html>"#;
        assert_eq!(
            assets(html),
            [
                "/forge/assets/app.css",
                "/favicon.ico",
                "./m.js",
                "/forge/assets/app.js",
                "logo.png"
            ]
        );
    }
}
