//! The rules names in configs and records follow: node, network and pod names, interface
//! names, namespace names. Their own module, as records and configs both check them and
//! neither should import the other for it.

/// Linux interface names: 1 to 15 bytes, no `/`, whitespace or `:`.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Node, network and pod names: DNS-label-like (lowercase letters, digits, `-`, `_`, `.`; 1 to 63).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with(['-', '.'])
}

/// Namespace names under /run/netns: a plain file name.
pub fn valid_netns(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s != "."
        && s != ".."
        && !s.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}
