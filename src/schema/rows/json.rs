//! A minimal pull scanner over the JSON text of one row.
//!
//! The decoder asks for exactly the token it expects next (a string, a number, a literal, a
//! bracket) instead of building a tree, so a value travels from the response bytes into a
//! column builder without an intermediate `serde_json::Value`. Strings without escapes are
//! returned as slices of the input; escaped strings are unescaped into one reused scratch
//! buffer, so scanning allocates nothing once the scratch has grown.
//!
//! The caller validates the whole row as UTF-8 before scanning, so every slice handed out
//! (and every unescaped string, built from `char`s) is valid UTF-8. Raw control characters
//! inside strings are accepted (strict JSON forbids them): dropping a row over them would
//! lose data that is otherwise fine.

use super::Fail;

/// A position in the text of one row.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Unescaped text of the last escaped string.
    scratch: Vec<u8>,
}

/// The text of a JSON number, checked against the JSON grammar.
#[derive(Debug, Clone, Copy)]
pub(super) struct Number<'a> {
    pub text: &'a [u8],
    /// No fraction and no exponent.
    pub is_integer: bool,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8], scratch: Vec<u8>) -> Self {
        Cursor { bytes, pos: 0, scratch }
    }

    /// Gives the scratch buffer back so the next row can reuse its capacity.
    pub fn into_scratch(self) -> Vec<u8> {
        self.scratch
    }

    pub fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        &self.bytes[start.min(self.bytes.len())..end.min(self.bytes.len())]
    }

    fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The first byte of the next token, after whitespace; `None` at the end of the text.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    /// The next token's first byte, or an error at the end of the text.
    #[inline]
    pub fn peek_value(&mut self) -> Result<u8, Fail> {
        self.peek().ok_or_else(|| Fail::new("unexpected end of row"))
    }

    /// Consumes `byte` if it is the next token.
    #[inline]
    pub fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub fn expect(&mut self, byte: u8) -> Result<(), Fail> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(Fail::new(format!("expected `{}`, found {}", byte as char, self.describe_next())))
        }
    }

    /// True when only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Names the next token for error messages.
    pub fn describe_next(&mut self) -> &'static str {
        match self.peek() {
            None => "the end of the row",
            Some(b'"') => "a string",
            Some(b'-' | b'0'..=b'9') => "a number",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            Some(b'[') => "an array",
            Some(b'{') => "an object",
            Some(_) => "invalid JSON",
        }
    }

    /// Consumes `true`, `false` or `null` spelled exactly as `word`.
    pub fn literal(&mut self, word: &[u8]) -> Result<(), Fail> {
        self.skip_ws();
        let end = self.pos + word.len();
        if self.bytes.get(self.pos..end) == Some(word) && !self.ident_continues(end) {
            self.pos = end;
            Ok(())
        } else {
            Err(Fail::new("invalid JSON literal"))
        }
    }

    fn ident_continues(&self, at: usize) -> bool {
        matches!(self.bytes.get(at), Some(b) if b.is_ascii_alphanumeric())
    }

    /// Consumes a boolean literal.
    pub fn boolean(&mut self) -> Result<bool, Fail> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(Fail::new(format!("expected a boolean, found {}", self.describe_next()))),
        }
    }

    /// Consumes a number and returns its text.
    pub fn number(&mut self) -> Result<Number<'a>, Fail> {
        self.skip_ws();
        let start = self.pos;
        let bytes = self.bytes;
        let mut pos = start;
        if bytes.get(pos) == Some(&b'-') {
            pos += 1;
        }
        let int_start = pos;
        while matches!(bytes.get(pos), Some(b'0'..=b'9')) {
            pos += 1;
        }
        let int_digits = pos - int_start;
        if int_digits == 0 {
            return Err(Fail::new(format!("expected a number, found {}", self.describe_next())));
        }
        if int_digits > 1 && bytes[int_start] == b'0' {
            return Err(Fail::new("invalid JSON number: leading zero"));
        }
        let mut is_integer = true;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            let frac_start = pos;
            while matches!(bytes.get(pos), Some(b'0'..=b'9')) {
                pos += 1;
            }
            if pos == frac_start {
                return Err(Fail::new("invalid JSON number: no digits after `.`"));
            }
            is_integer = false;
        }
        if matches!(bytes.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            if matches!(bytes.get(pos), Some(b'+' | b'-')) {
                pos += 1;
            }
            let exp_start = pos;
            while matches!(bytes.get(pos), Some(b'0'..=b'9')) {
                pos += 1;
            }
            if pos == exp_start {
                return Err(Fail::new("invalid JSON number: no digits in the exponent"));
            }
            is_integer = false;
        }
        if self.ident_continues(pos) || bytes.get(pos) == Some(&b'.') {
            return Err(Fail::new("invalid JSON number"));
        }
        self.pos = pos;
        Ok(Number { text: &bytes[start..pos], is_integer })
    }

    /// Consumes a string and returns its unescaped bytes (valid UTF-8 when the row is).
    #[inline]
    pub fn string(&mut self) -> Result<&[u8], Fail> {
        let (start, end, escaped) = self.string_span()?;
        self.text(start, end, escaped)
    }

    /// The unescaped text of a string span returned by [`Cursor::string_span`].
    pub fn text(&mut self, start: usize, end: usize, escaped: bool) -> Result<&[u8], Fail> {
        let raw = self.slice(start, end);
        if !escaped {
            return Ok(raw);
        }
        self.scratch.clear();
        unescape(raw, &mut self.scratch)?;
        Ok(&self.scratch)
    }

    /// Consumes a string and returns the byte range of its raw (still escaped) content and
    /// whether it holds escapes.
    pub fn string_span(&mut self) -> Result<(usize, usize, bool), Fail> {
        if self.peek() != Some(b'"') {
            return Err(Fail::new(format!("expected a string, found {}", self.describe_next())));
        }
        let start = self.pos + 1;
        let bytes = self.bytes;
        let mut pos = start;
        let mut escaped = false;
        loop {
            match bytes.get(pos) {
                None => return Err(Fail::new("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    pos += 2;
                }
                Some(_) => pos += 1,
            }
        }
        self.pos = pos + 1;
        Ok((start, pos, escaped))
    }
}

/// Appends the unescaped form of a string's raw content to `out`.
pub(super) fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), Fail> {
    let mut pos = 0;
    while pos < raw.len() {
        let Some(offset) = raw[pos..].iter().position(|&b| b == b'\\') else {
            out.extend_from_slice(&raw[pos..]);
            return Ok(());
        };
        out.extend_from_slice(&raw[pos..pos + offset]);
        pos += offset + 1;
        let Some(&kind) = raw.get(pos) else {
            return Err(Fail::new("unterminated escape in a string"));
        };
        pos += 1;
        let byte = match kind {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (ch, used) = unicode_escape(&raw[pos..])?;
                pos += used;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            other => return Err(Fail::new(format!("invalid escape `\\{}` in a string", other as char))),
        };
        out.push(byte);
    }
    Ok(())
}

/// Decodes the text after `\u`: four hex digits, or a surrogate pair `XXXX\uYYYY`.
/// Returns the character and the bytes used.
fn unicode_escape(rest: &[u8]) -> Result<(char, usize), Fail> {
    let high = hex4(rest)?;
    if !(0xD800..0xE000).contains(&high) {
        return char::from_u32(high).map(|c| (c, 4)).ok_or_else(bad_unicode);
    }
    if high >= 0xDC00 || rest.get(4..6) != Some(b"\\u") {
        return Err(Fail::new("unpaired surrogate in a \\u escape"));
    }
    let low = hex4(&rest[6..])?;
    if !(0xDC00..0xE000).contains(&low) {
        return Err(Fail::new("unpaired surrogate in a \\u escape"));
    }
    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
    char::from_u32(code).map(|c| (c, 10)).ok_or_else(bad_unicode)
}

fn bad_unicode() -> Fail {
    Fail::new("invalid \\u escape")
}

fn hex4(text: &[u8]) -> Result<u32, Fail> {
    let digits = text.get(..4).ok_or_else(bad_unicode)?;
    let mut value = 0u32;
    for &digit in digits {
        let nibble = (digit as char).to_digit(16).ok_or_else(bad_unicode)?;
        value = value * 16 + nibble;
    }
    Ok(value)
}
