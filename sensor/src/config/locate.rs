//! Where a key is in the config text, so that every error names a line and column: a value
//! that validation refuses is found by its key, and a value serde refuses (a negative number
//! for a count, text for a size) is named by the key it sits under.

use std::ops::Range;

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

/// A key's place: the dotted key (`detect.burst.bytes`, `files.records[0]`) and whether the
/// offset fell on the key itself (an unknown key) rather than on its value.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Place {
    pub key: String,
    pub on_key: bool,
}

/// The innermost key whose key or value holds byte `offset` of `text`; none when the text is
/// not TOML at all (a syntax error is not about any one key).
pub(super) fn key_at(text: &str, offset: usize) -> Option<Place> {
    let doc = DeTable::parse(text).ok()?;
    find_in_table(doc.get_ref(), offset, "")
}

fn find_in_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<Place> {
    table.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if key.span().contains(&offset) {
            return Some(Place {
                key: path,
                on_key: true,
            });
        }
        find_in_value(value, offset, &path)
    })
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<Place> {
    // A table's or array's own span need not cover its entries (a `[header]` table spans its
    // header): look inside first.
    let inner = match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_in_value(item, offset, &format!("{path}[{i}]"))),
        _ => None,
    };
    inner.or_else(|| {
        value.span().contains(&offset).then(|| Place {
            key: path.to_owned(),
            on_key: false,
        })
    })
}

/// The span of the value of the dotted `key` (`files.records[1]`), if the text sets it.
pub(super) fn value_span(text: &str, key: &str) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let mut indices = part.split('[');
        let name = indices.next()?;
        let (_, mut value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        for index in indices {
            let index: usize = index.strip_suffix(']')?.parse().ok()?;
            match value.get_ref() {
                DeValue::Array(items) => value = items.get(index)?,
                _ => return None,
            }
        }
        if parts.peek().is_none() {
            return Some(value.span());
        }
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => return None,
        }
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_under_headers_dotted_keys_and_arrays() {
        let text = "[kernel]\nflow_map_entries = -5\n[detect.burst]\nbytes = \"x\"\n\
                    [files]\nrecords = [\"/a\", \"\"]\n[[detect.profile]]\nname = \"n\"\n";
        let at = |needle: &str| text.find(needle).expect("in text");
        assert_eq!(
            key_at(text, at("-5")),
            Some(Place {
                key: "kernel.flow_map_entries".into(),
                on_key: false
            })
        );
        assert_eq!(
            key_at(text, at("bytes")),
            Some(Place {
                key: "detect.burst.bytes".into(),
                on_key: true
            })
        );
        assert_eq!(
            key_at(text, at("\"\"")).map(|p| p.key),
            Some("files.records[1]".into())
        );
        assert_eq!(
            key_at(text, at("\"n\"")).map(|p| p.key),
            Some("detect.profile[0].name".into())
        );
        let span = value_span(text, "detect.burst.bytes").expect("set");
        assert_eq!(line_column(text, span.start), (4, 9));
        assert_eq!(value_span(text, "detect.burst.window"), None);
        let span = value_span(text, "files.records[1]").expect("set");
        assert_eq!(line_column(text, span.start), (6, 18));
        let span = value_span(text, "detect.profile[0].name").expect("set");
        assert_eq!(line_column(text, span.start), (8, 8));
    }
}
