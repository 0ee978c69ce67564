//! A strict RFC 4180 reader for the tests (also used by `src/export.rs`'s unit tests).

/// A strict RFC 4180 reader: quoted cells may hold anything, quotes are doubled, CRLF ends a record.
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut cell, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => quoted = false,
                c => cell.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                assert!(cell.is_empty(), "a quote inside an unquoted cell");
                quoted = true;
            }
            ',' => record.push(std::mem::take(&mut cell)),
            '\r' => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF");
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            c => {
                assert_ne!(c, '\n', "a bare LF outside quotes");
                cell.push(c);
            }
        }
    }
    assert!(!quoted && cell.is_empty() && record.is_empty(), "the text ends inside a record");
    records
}
