//! Name suffixes, as detection's allow and deny lists give them: `backup.example.net` stands
//! for itself and every name under it (`eu1.backup.example.net`), never for a name that only
//! ends in the same letters (`evilbackup.example.net`).

/// Why `suffix` is not a name suffix, if it is not one. Letters may be upper case (DNS
/// compares names without case; [`normalize`] lowers them).
pub fn check(suffix: &str) -> Result<(), &'static str> {
    // RFC 1035 2.3.4: 255 octets on the wire, 253 characters as dotted text.
    if suffix.is_empty() {
        return Err("an empty suffix would match every name; remove it");
    }
    if suffix.len() > 253 {
        return Err("a DNS name is at most 253 characters");
    }
    if suffix.starts_with('.') || suffix.ends_with('.') {
        return Err("write the suffix without a leading or trailing dot (backup.example.net)");
    }
    for label in suffix.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row)");
        }
        if label.len() > 63 {
            return Err("a label is at most 63 characters");
        }
        // Letters, digits and hyphens (RFC 1123 2.1), and the underscore of service names
        // (`_dmarc`); no wildcards: every suffix already stands for the names under it.
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "labels are letters, digits, '-' and '_' (no '*': a suffix matches every name under it)",
            );
        }
    }
    Ok(())
}

/// The suffix as names are compared: lower case.
pub fn normalize(suffix: &str) -> String {
    suffix.to_ascii_lowercase()
}

/// Whether `name` (lower case, as the DNS answers give it) is `suffix` (normalized) or a name
/// under it.
pub fn matches(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// The first of `suffixes` that `name` falls under.
pub fn first_match<'a>(name: &str, suffixes: &'a [String]) -> Option<&'a str> {
    suffixes
        .iter()
        .map(String::as_str)
        .find(|s| matches(name, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_matches_itself_and_names_under_it_only() {
        assert!(matches("backup.example.net", "backup.example.net"));
        assert!(matches("eu1.backup.example.net", "backup.example.net"));
        assert!(matches("a.b.backup.example.net", "backup.example.net"));
        assert!(!matches("evilbackup.example.net", "backup.example.net"));
        assert!(!matches(
            "backup.example.net.evil.test",
            "backup.example.net"
        ));
        assert!(!matches("example.net", "backup.example.net"));
        let list = vec!["example.org".to_owned(), "backup.example.net".to_owned()];
        assert_eq!(
            first_match("x.backup.example.net", &list),
            Some("backup.example.net")
        );
        assert_eq!(first_match("example.com", &list), None);
    }

    #[test]
    fn bad_suffixes_say_why() {
        assert_eq!(check("backup.example.net"), Ok(()));
        assert_eq!(check("Backup.Example.NET"), Ok(()));
        assert_eq!(check("_dmarc.example.net"), Ok(()));
        assert_eq!(
            check(""),
            Err("an empty suffix would match every name; remove it")
        );
        assert_eq!(
            check(".example.net"),
            Err("write the suffix without a leading or trailing dot (backup.example.net)")
        );
        assert_eq!(check("a..b"), Err("empty label (two dots in a row)"));
        assert_eq!(
            check("*.example.net"),
            Err(
                "labels are letters, digits, '-' and '_' (no '*': a suffix matches every name under it)"
            )
        );
        assert_eq!(
            check(&"a".repeat(64)),
            Err("a label is at most 63 characters")
        );
        assert_eq!(
            check(&["a"; 128].join(".")),
            Err("a DNS name is at most 253 characters")
        );
        assert_eq!(normalize("Backup.Example.NET"), "backup.example.net");
    }
}
