//! The splitter against the parser: the documents it cuts are the parser's.
use super::*;
use crate::manifests::Object;

/// Each piece as (first line, text).
fn pieces(text: &str) -> Vec<(u32, &str)> {
    split(text)
        .into_iter()
        .map(|p| (p.line, &text[p.range]))
        .collect()
}

/// The objects of the text parsed piece by piece, with the file's lines.
fn by_pieces(text: &str) -> Result<Vec<Object>, SourceError> {
    let mut out = Vec::new();
    for p in split(text) {
        for mut o in manifests::parse_text(Path::new("f.yaml"), &text[p.range])? {
            o.origin.line += u64::from(p.line - 1);
            out.push(o);
        }
    }
    Ok(out)
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\n";

#[test]
fn leading_marker_or_none() {
    let t = format!("---\n{SVC}---\n{SVC}");
    let p = pieces(&t);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0], (1, &t[..4 + SVC.len()]));
    assert_eq!(p[1].0, 5);
    assert!(p[1].1.starts_with("---\napiVersion"));
    let t = format!("{SVC}---\n{SVC}");
    assert_eq!(pieces(&t).iter().map(|p| p.0).collect::<Vec<_>>(), [1, 4]);
    assert!(pieces("").is_empty());
    assert_eq!(pieces(SVC), [(1, SVC)]);
}

#[test]
fn markers_inside_scalars_and_look_alikes_do_not_cut() {
    let t = "a: |\n  ---\n  ...\n  x\nb: \"--- y\n  --- z\"\nc: '---'\n\
             d: >\n   ---\n#---\n----\n---x\n...x\n  ---\nkind: X\n";
    assert_eq!(pieces(t), [(1, t)]);
}

#[test]
fn end_markers_comments_and_content_after_the_marker() {
    let t = "# head\n---\na: 1\n...\n# between\n--- {b: 2}\n---\t# c\nc: 3\n...";
    assert_eq!(
        pieces(t),
        [
            (1, "# head\n"),
            (2, "---\na: 1\n...\n"),
            (5, "# between\n"),
            (6, "--- {b: 2}\n"),
            (7, "---\t# c\nc: 3\n..."),
        ]
    );
}

#[test]
fn crlf_and_byte_order_mark() {
    let t = "\u{feff}--- \r\na: 1\r\n---\r\nb: 2\r\n...\r\n";
    let p = pieces(t);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].1, "\u{feff}--- \r\na: 1\r\n");
    assert_eq!(p[1], (3, "---\r\nb: 2\r\n...\r\n"));
}

#[test]
fn a_directive_makes_the_file_one_piece() {
    let t = "%YAML 1.2\n---\na: 1\n---\nb: 2\n";
    assert_eq!(pieces(t), [(1, t)]);
}

/// Whatever the text, the pieces parsed one by one give the objects (and lines) the whole
/// text gives, or both fail.
#[test]
fn pieces_parse_as_the_whole_text() {
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                metadata: {name: n}\n";
    let texts = [
        format!("{SVC}---\n{SVC}"),
        format!("# c\n---\n{SVC}...\n---\n{list}---\n~\n---\n"),
        format!(
            "---\n{SVC}metadata2: |\n  ---\n  x\n---\r\n{SVC}---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: \"--- q\n  --- r\"}}\n"
        ),
        format!("{SVC}...\n{SVC}"),
        format!("--- {{apiVersion: v1, kind: Node}}\n--- \n{SVC}"),
        "a: [\n---\nb: 1\n".to_string(),
        format!("{SVC}---\n- 1\n"),
    ];
    for t in &texts {
        let whole = manifests::parse_text(Path::new("f.yaml"), t);
        let cut = by_pieces(t);
        match (whole, cut) {
            (Ok(w), Ok(c)) => assert_eq!(w, c, "{t}"),
            (Err(_), Err(_)) => {}
            (w, c) => panic!("{t}: whole {w:?}, pieces {c:?}"),
        }
    }
}

#[test]
fn a_bad_document_names_the_file_its_line_and_its_object() {
    let t = format!(
        "{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: b, namespace: x}}\n\
         spec:\n  ports:\n  - port: eighty\n---\nkind: [\n"
    );
    let p = split(&t);
    let mut m = Manifests::default();
    parse_piece(Path::new("f.yaml"), &t, &p[0], &mut m).unwrap();
    assert_eq!(m.services[0].0.line, 1);
    let e = parse_piece(Path::new("f.yaml"), &t, &p[1], &mut m)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("f.yaml:5: field `spec.ports[0].port`"), "{e}");
    assert!(
        e.ends_with("(in the document at line 4, Service x/b)"),
        "{e}"
    );
    let e = parse_piece(Path::new("f.yaml"), &t, &p[2], &mut m)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("f.yaml:12:"), "{e}");
    assert!(e.ends_with("(in the document at line 11)"), "{e}");
}

#[test]
fn digests_tell_texts_apart() {
    let t = format!("{SVC}---\n{SVC}---\n{}", SVC.replace("a,", "b,"));
    let p = split(&t);
    let d: Vec<Digest> = p.iter().map(|p| p.digest(&t)).collect();
    assert_ne!(d[0], d[1]); // the second starts with its marker
    assert_eq!(d[1], p[1].digest(&t));
    assert_ne!(d[1], d[2]);
}

#[test]
fn origins_move_with_their_document() {
    let f = Path::new("/m/a.yaml");
    assert_eq!(
        moved_origin("/m/a.yaml:12", f, 3).as_deref(),
        Some("/m/a.yaml:15")
    );
    assert_eq!(
        moved_origin("/m/a.yaml:12 items[2]", f, -2).as_deref(),
        Some("/m/a.yaml:10 items[2]")
    );
    assert_eq!(moved_origin("/m/b.yaml:12", f, 1), None);
}

/// The reader cuts any text as `split` does, whatever its buffer's size (documents across reads,
/// longer than the buffer, a byte order mark, CRLF, a last line without a break).
#[test]
fn the_reader_cuts_as_split() {
    let long = format!("---\n{}", "a: 1\n".repeat(40));
    let mut texts = vec![
        String::new(),
        format!("---\n{SVC}---\n{SVC}"),
        format!("{SVC}---\n{SVC}"),
        "a: |\n  ---\n  ...\n  x\nb: \"--- y\n  --- z\"\nc: '---'\n----\n---x\n".to_string(),
        "# head\n---\na: 1\n...\n# between\n--- {b: 2}\n---\t# c\nc: 3\n...".to_string(),
        "\u{feff}--- \r\na: 1\r\n---\r\nb: 2\r\n...\r\n".to_string(),
        "\u{feff}a: 1\n---\nb: 2".to_string(),
        format!("{long}{long}...\n{long}"),
    ];
    texts.push(texts.concat());
    for t in &texts {
        let want: Vec<(u32, &str)> = pieces(t);
        for block in [16, 17, 31, 64, 4096] {
            let mut r = Reader::new(t.as_bytes(), block);
            let mut got = Vec::new();
            while let Some(n) = r.next().unwrap() {
                let Next::Doc(line, range) = n else {
                    panic!("no directive in {t:?}")
                };
                got.push((line, String::from_utf8(r.bytes(range).to_vec()).unwrap()));
            }
            let got: Vec<(u32, &str)> = got.iter().map(|(l, s)| (*l, s.as_str())).collect();
            assert_eq!(got, want, "block {block}: {t:?}");
        }
    }
    let mut r = Reader::new("---\na: 1\n---\n%YAML 1.2\n".as_bytes(), 16);
    assert!(matches!(r.next().unwrap(), Some(Next::Doc(1, _))));
    assert!(matches!(r.next().unwrap(), Some(Next::Directive)));
}
