//! Tree entries as git's plumbing speaks them, shared by the fix commit's own index
//! (`own_work.rs`) and `buildlock take-fix` (`take_fix.rs`): what `git diff-tree --raw -z`
//! prints, and what `git update-index -z --index-info` reads.

/// A tree entry: mode and object id; `None` where the path is absent.
pub(super) type Entry = Option<(String, String)>;

/// A path, with its entry on each side of a diff.
pub(super) type Change = (Vec<u8>, Entry, Entry);

/// The arguments of `git` that print the paths differing between two trees, for [`parse_raw`].
pub(super) fn raw_diff_args<'a>(from: &'a str, to: &'a str) -> [&'a str; 7] {
    ["diff-tree", "-r", "-z", "--no-renames", "--raw", from, to]
}

/// Parses `git diff-tree -r -z --raw` output: each path with its entries on both sides.
pub(super) fn parse_raw(raw: &[u8]) -> Vec<Change> {
    let mut found = Vec::new();
    let mut fields = raw.split(|&b| b == 0);
    while let Some(meta) = fields.next() {
        if meta.is_empty() {
            continue;
        }
        let Some(path) = fields.next() else { break };
        // :<old mode> <new mode> <old oid> <new oid> <status>
        let meta = String::from_utf8_lossy(meta);
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        let [om, nm, oo, no, _status] = parts[..] else {
            continue;
        };
        let side = |m: &str, o: &str| (m != "000000").then(|| (m.to_owned(), o.to_owned()));
        found.push((path.to_vec(), side(om, oo), side(nm, no)));
    }
    found
}

/// `git update-index -z --index-info` input for `entries` (an absent entry removes the path).
pub(super) fn index_info(entries: &[(Vec<u8>, Entry)]) -> Vec<u8> {
    let mut input = Vec::new();
    for (path, entry) in entries {
        let line = match entry {
            Some((mode, oid)) => format!("{mode} {oid}\t"),
            None => "0 0000000000000000000000000000000000000000\t".to_owned(),
        };
        input.extend_from_slice(line.as_bytes());
        input.extend_from_slice(path);
        input.push(0);
    }
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_diff_output_reads_as_changes_and_writes_back_as_index_info() {
        let oid_a = "a".repeat(40);
        let oid_b = "b".repeat(40);
        let zero = "0".repeat(40);
        let raw = format!(
            ":100644 100644 {oid_a} {oid_b} M\0src/a b.rs\0:000000 100755 {zero} {oid_b} A\0new\0\
             :100644 000000 {oid_a} {zero} D\0gone\0"
        );
        let changes = parse_raw(raw.as_bytes());
        let entry = |m: &str, o: &str| Some((m.to_owned(), o.to_owned()));
        assert_eq!(
            changes,
            vec![
                (
                    b"src/a b.rs".to_vec(),
                    entry("100644", &oid_a),
                    entry("100644", &oid_b)
                ),
                (b"new".to_vec(), None, entry("100755", &oid_b)),
                (b"gone".to_vec(), entry("100644", &oid_a), None),
            ]
        );
        let after: Vec<(Vec<u8>, Entry)> = changes.into_iter().map(|(p, _, t)| (p, t)).collect();
        assert_eq!(
            index_info(&after),
            format!("100644 {oid_b}\tsrc/a b.rs\0100755 {oid_b}\tnew\00 {zero}\tgone\0")
                .into_bytes()
        );
    }
}
