//! The end of a chunked body, found as its bytes pass.

/// Finds the end of a chunked body (RFC 9112 §7.1) as its bytes pass, without changing them.
#[derive(Debug, Default)]
pub(super) struct ChunkScan {
    state: Ck,
    size: u64,
    digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Ck {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    FinalLf,
}

impl ChunkScan {
    /// Feeds the next bytes; `Some(n)`: the body ends after `n` of them.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < data.len() {
            let c = data[i];
            match self.state {
                Ck::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err(());
                        }
                        let d = (c as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Ck::Ext,
                    b'\r' if self.digits > 0 => self.state = Ck::SizeLf,
                    b'\n' if self.digits > 0 => self.size_line_end(),
                    _ => return Err(()),
                },
                Ck::Ext => match c {
                    b'\r' => self.state = Ck::SizeLf,
                    b'\n' => self.size_line_end(),
                    _ => {}
                },
                Ck::SizeLf => match c {
                    b'\n' => self.size_line_end(),
                    _ => return Err(()),
                },
                Ck::Data => {
                    let n = self.size.min((data.len() - i) as u64);
                    self.size -= n;
                    i += n as usize;
                    if self.size == 0 {
                        self.state = Ck::DataCr;
                    }
                    continue;
                }
                Ck::DataCr => match c {
                    b'\r' => self.state = Ck::DataLf,
                    b'\n' => self.state = Ck::Size,
                    _ => return Err(()),
                },
                Ck::DataLf => match c {
                    b'\n' => self.state = Ck::Size,
                    _ => return Err(()),
                },
                Ck::TrailerStart => match c {
                    b'\r' => self.state = Ck::FinalLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => self.state = Ck::TrailerLine,
                },
                Ck::TrailerLine => {
                    if c == b'\n' {
                        self.state = Ck::TrailerStart;
                    }
                }
                Ck::FinalLf => match c {
                    b'\n' => return Ok(Some(i + 1)),
                    _ => return Err(()),
                },
            }
            i += 1;
        }
        Ok(None)
    }

    fn size_line_end(&mut self) {
        self.digits = 0;
        self.state = if self.size == 0 {
            Ck::TrailerStart
        } else {
            Ck::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_scan_finds_the_end_across_any_split() {
        let body: &[u8] =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut s = ChunkScan::default();
            let got = match s.feed(&body[..split]).unwrap() {
                Some(n) => Some(n),
                None => s.feed(&body[split..]).unwrap().map(|n| n + split),
            };
            assert_eq!(got, Some(end), "split at {split}");
        }
        // Without trailers, and byte by byte.
        let body = b"3\r\nabc\r\n0\r\n\r\n";
        let mut s = ChunkScan::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = s.feed(std::slice::from_ref(b)).unwrap() {
                end = Some(i + n);
                break;
            }
        }
        assert_eq!(end, Some(body.len()));
    }

    #[test]
    fn chunk_scan_refuses_garbage() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"ffffffffffffffff\r\n",
            b"0\r\n\rX",
        ] {
            assert!(ChunkScan::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}
