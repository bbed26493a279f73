//! Tracepoint record layouts, read from tracefs `format` files.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum FormatError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: no field `{field}`")]
    NoField { path: String, field: String },
    #[error("{path}: field `{field}` is at offset {offset}, beyond what the sensor can address")]
    Offset {
        path: String,
        field: String,
        offset: usize,
    },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
}

/// The fields of one tracepoint's record, by name.
#[derive(Debug)]
pub struct Format {
    path: PathBuf,
    fields: HashMap<String, Field>,
}

impl Format {
    /// Reads `<tracefs>/events/<category>/<name>/format`.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, FormatError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|cause| FormatError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Ok(Self {
            fields: parse(&text),
            path,
        })
    }

    /// The byte offset of `field`, as the `u16` the kernel programs take.
    pub fn offset(&self, field: &str) -> Result<u16, FormatError> {
        let found = self.fields.get(field).ok_or_else(|| FormatError::NoField {
            path: self.path.display().to_string(),
            field: field.to_owned(),
        })?;
        u16::try_from(found.offset).map_err(|_| FormatError::Offset {
            path: self.path.display().to_string(),
            field: field.to_owned(),
            offset: found.offset,
        })
    }
}

/// Parses lines such as `\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;`.
/// Lines that do not have that shape (name, ID, print fmt) are not fields and are skipped.
fn parse(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';').map(str::trim) {
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse().ok();
            }
        }
        if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
            // The name is the declaration's last word, without an array suffix: `__u8 saddr[4]`.
            let last = decl.rsplit([' ', '*']).next().unwrap_or(decl);
            let name = last.split('[').next().unwrap_or(last);
            fields.insert(name.to_owned(), Field { offset, size });
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim from Linux 6.18, /sys/kernel/tracing/events/sock/sock_send_length/format.
    const SOCK_SEND_LENGTH: &str = "name: sock_send_length
ID: 2284
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;

print fmt: \"sk address = %p, family = %s\", REC->sk, REC->family
";

    #[test]
    fn parses_sock_send_length() {
        let fields = parse(SOCK_SEND_LENGTH);
        assert_eq!(fields.len(), 9);
        assert_eq!(fields["sk"], Field { offset: 8, size: 8 });
        assert_eq!(
            fields["family"],
            Field {
                offset: 16,
                size: 2
            }
        );
        assert_eq!(
            fields["protocol"],
            Field {
                offset: 18,
                size: 2
            }
        );
        assert_eq!(
            fields["ret"],
            Field {
                offset: 20,
                size: 4
            }
        );
        assert_eq!(fields["common_pid"], Field { offset: 4, size: 4 });
    }

    #[test]
    fn array_fields_lose_their_suffix() {
        let fields = parse("\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n");
        assert_eq!(
            fields["daddr_v6"],
            Field {
                offset: 56,
                size: 16
            }
        );
    }

    #[test]
    fn missing_field_is_named_with_its_file() {
        let format = Format {
            path: PathBuf::from("/t/events/sock/x/format"),
            fields: parse(SOCK_SEND_LENGTH),
        };
        assert_eq!(format.offset("ret").expect("ret"), 20);
        let err = format.offset("len").expect_err("absent");
        assert_eq!(err.to_string(), "/t/events/sock/x/format: no field `len`");
    }
}
