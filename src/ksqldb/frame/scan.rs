//! A small structural JSON scanner: finds where strings, containers and object members end
//! without building values, so row text can be sliced out of the response bytes as it is.
//!
//! It checks structure only (quotes, escapes, bracket kinds, member syntax); the contents of
//! numbers and literals are left to the row decoder, which parses every value anyway.

use std::ops::Range;

/// Containers nested deeper than this are rejected: the bracket stack is one `u128`.
const MAX_DEPTH: u32 = 128;

/// Structurally invalid JSON: `position` is relative to the scanned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScanError {
    pub position: usize,
    pub reason: &'static str,
}

impl ScanError {
    fn at(position: usize, reason: &'static str) -> Self {
        ScanError { position, reason }
    }
}

pub(super) fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first position at or after `position` that is not JSON whitespace.
pub(super) fn skip_whitespace(text: &[u8], mut position: usize) -> usize {
    while position < text.len() && is_json_whitespace(text[position]) {
        position += 1;
    }
    position
}

/// `text[range]` without leading and trailing JSON whitespace.
pub(super) fn trim(text: &[u8], range: Range<usize>) -> Range<usize> {
    let mut start = range.start;
    let mut end = range.end;
    while start < end && is_json_whitespace(text[start]) {
        start += 1;
    }
    while end > start && is_json_whitespace(text[end - 1]) {
        end -= 1;
    }
    start..end
}

/// Incremental scanner of one container (`{...}` or `[...]`): it can be fed the value's bytes
/// in any number of pieces and keeps its string/escape/nesting state between them.
#[derive(Debug, Clone, Default)]
pub(super) struct ContainerScanner {
    /// One bit per open container, innermost in bit 0: 1 = object, 0 = array.
    kinds: u128,
    depth: u32,
    in_string: bool,
    /// The previous byte inside a string was an unescaped backslash.
    escaped: bool,
    /// Bytes fed so far, so errors can point into the whole value.
    consumed: usize,
}

impl ContainerScanner {
    pub(super) fn new() -> Self {
        ContainerScanner::default()
    }

    /// Feeds the next piece of the value (the first piece starts at its opening bracket).
    /// Returns the end (exclusive, relative to `piece`) when the container closes in this piece.
    pub(super) fn feed(&mut self, piece: &[u8]) -> Result<Option<usize>, ScanError> {
        let mut index = 0;
        while index < piece.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    index += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &piece[index..]) {
                    None => break,
                    Some(found) => {
                        let at = index + found;
                        if piece[at] == b'"' {
                            self.in_string = false;
                        } else {
                            self.escaped = true;
                        }
                        index = at + 1;
                        continue;
                    }
                }
            }
            let byte = piece[index];
            if self.depth == 0 && !matches!(byte, b'{' | b'[') {
                return Err(ScanError::at(self.consumed + index, "expected `{` or `[`"));
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == MAX_DEPTH {
                        return Err(ScanError::at(self.consumed + index, "nesting too deep"));
                    }
                    self.kinds = (self.kinds << 1) | u128::from(byte == b'{');
                    self.depth += 1;
                }
                b'}' | b']' => {
                    let is_object = self.kinds & 1 == 1;
                    if is_object != (byte == b'}') {
                        return Err(ScanError::at(self.consumed + index, "mismatched bracket"));
                    }
                    self.kinds >>= 1;
                    self.depth -= 1;
                    if self.depth == 0 {
                        let end = index + 1;
                        self.consumed += end;
                        return Ok(Some(end));
                    }
                }
                _ => {}
            }
            index += 1;
        }
        self.consumed += piece.len();
        Ok(None)
    }
}

/// The end (exclusive) of the string starting with the quote at `start`.
pub(super) fn string_end(text: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut index = start + 1;
    loop {
        let Some(found) = memchr::memchr2(b'"', b'\\', text.get(index..).unwrap_or_default()) else {
            return Err(ScanError::at(start, "unterminated string"));
        };
        let at = index + found;
        if text[at] == b'"' {
            return Ok(at + 1);
        }
        index = at + 2;
    }
}

/// The end (exclusive) of the JSON value starting at `start` (no leading whitespace).
pub(super) fn value_end(text: &[u8], start: usize) -> Result<usize, ScanError> {
    match text.get(start) {
        None => Err(ScanError::at(start, "expected a value")),
        Some(b'"') => string_end(text, start),
        Some(b'{' | b'[') => {
            let mut scanner = ContainerScanner::new();
            match scanner.feed(&text[start..]) {
                Ok(Some(length)) => Ok(start + length),
                Ok(None) => Err(ScanError::at(start, "unterminated container")),
                Err(error) => Err(ScanError::at(start + error.position, error.reason)),
            }
        }
        Some(_) => {
            let mut end = start;
            while end < text.len()
                && !matches!(text[end], b',' | b'}' | b']' | b':' | b'"')
                && !is_json_whitespace(text[end])
            {
                end += 1;
            }
            if end == start {
                return Err(ScanError::at(start, "expected a value"));
            }
            Ok(end)
        }
    }
}

/// One object member: the raw key bytes and the value's range.
pub(super) type Member<'a> = (&'a [u8], Range<usize>);

/// Iterates over the members of the object starting at `start`: yields the raw key bytes
/// (between the quotes, escapes left as they are) and the value's range.
pub(super) struct ObjectMembers<'a> {
    text: &'a [u8],
    position: usize,
    first: bool,
    done: bool,
}

impl<'a> ObjectMembers<'a> {
    pub(super) fn new(text: &'a [u8], start: usize) -> Result<Self, ScanError> {
        if text.get(start) != Some(&b'{') {
            return Err(ScanError::at(start, "expected an object"));
        }
        Ok(ObjectMembers { text, position: start + 1, first: true, done: false })
    }

    /// The position just after the closing `}` (valid once `next` has returned `None`).
    pub(super) fn end(&self) -> usize {
        self.position
    }

    pub(super) fn next_member(&mut self) -> Result<Option<Member<'a>>, ScanError> {
        let Some((key, value_start)) = self.next_key()? else {
            return Ok(None);
        };
        let end = value_end(self.text, value_start)?;
        self.value_done(end);
        Ok(Some((key, value_start..end)))
    }

    /// The next member's raw key and the start of its value, for a caller that scans the
    /// value itself (and then reports its end with [`ObjectMembers::value_done`]).
    pub(super) fn next_key(&mut self) -> Result<Option<(&'a [u8], usize)>, ScanError> {
        if self.done {
            return Ok(None);
        }
        let text = self.text;
        let mut position = skip_whitespace(text, self.position);
        if text.get(position) == Some(&b'}') {
            self.position = position + 1;
            self.done = true;
            return Ok(None);
        }
        if !self.first {
            if text.get(position) != Some(&b',') {
                return Err(ScanError::at(position, "expected `,` or `}`"));
            }
            position = skip_whitespace(text, position + 1);
        }
        self.first = false;
        if text.get(position) != Some(&b'"') {
            return Err(ScanError::at(position, "expected a member name"));
        }
        let key_end = string_end(text, position)?;
        let key = &text[position + 1..key_end - 1];
        position = skip_whitespace(text, key_end);
        if text.get(position) != Some(&b':') {
            return Err(ScanError::at(position, "expected `:`"));
        }
        let value_start = skip_whitespace(text, position + 1);
        self.position = value_start;
        Ok(Some((key, value_start)))
    }

    /// Records where the value returned by [`ObjectMembers::next_key`] ended.
    pub(super) fn value_done(&mut self, end: usize) {
        self.position = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_scanner_honours_strings_escapes_and_nesting() {
        let text = br#"[1,"a]\"}",{"b":[2,{"c":"\\"}]}] tail"#;
        let mut scanner = ContainerScanner::new();
        let end = scanner.feed(text).unwrap().unwrap();
        assert_eq!(&text[end..], b" tail");
    }

    #[test]
    fn container_scanner_resumes_at_every_split() {
        let text = br#"{"a":"x\\\"y","b":[[],{}]}"#;
        for split in 0..text.len() {
            let mut scanner = ContainerScanner::new();
            let first = scanner.feed(&text[..split]).unwrap();
            let total = match first {
                Some(end) => end,
                None => split + scanner.feed(&text[split..]).unwrap().unwrap(),
            };
            assert_eq!(total, text.len(), "split at {split}");
        }
    }

    #[test]
    fn container_scanner_rejects_mismatched_brackets() {
        let mut scanner = ContainerScanner::new();
        let error = scanner.feed(b"[1,{]}").unwrap_err();
        assert_eq!(error.position, 4);
        assert!(ContainerScanner::new().feed(b"x[]").is_err());
    }

    #[test]
    fn object_members_yields_keys_and_value_ranges() {
        let text = br#"{ "row" : {"columns":[1]} , "sourceHost":"h:1","n":-1.5e3}"#;
        let mut members = ObjectMembers::new(text, 0).unwrap();
        let mut seen = Vec::new();
        while let Some((key, range)) = members.next_member().unwrap() {
            seen.push((String::from_utf8_lossy(key).into_owned(), &text[range]));
        }
        assert_eq!(seen[0], ("row".to_string(), &br#"{"columns":[1]}"#[..]));
        assert_eq!(seen[1], ("sourceHost".to_string(), &br#""h:1""#[..]));
        assert_eq!(seen[2], ("n".to_string(), &b"-1.5e3"[..]));
        assert_eq!(members.end(), text.len());
    }

    #[test]
    fn object_members_rejects_broken_syntax() {
        for text in [&br#"{"a" 1}"#[..], br#"{"a":1 "b":2}"#, br#"{a:1}"#, br#"{"a":"#] {
            let mut members = ObjectMembers::new(text, 0).unwrap();
            let mut result = Ok(None);
            for _ in 0..4 {
                result = members.next_member();
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "{}", String::from_utf8_lossy(text));
        }
    }
}
