//! Reading files by rounds and big files by rounds of documents.
use super::*;
use crate::manifests::tests::TempDir;

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: 10.96.0.1, ports: [{{port: 80}}]}}\n"
    )
}

/// More files than a round, across several threads: every file comes back once, in the
/// order given.
#[test]
fn files_come_back_in_order_across_rounds_and_threads() {
    let dir = TempDir::new("files");
    let n = ROUND * 2 + 17;
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| {
            let p = dir.0.join(format!("s{i:04}.yaml"));
            std::fs::write(&p, service(&format!("s{i}"))).unwrap();
            p
        })
        .collect();
    let mut seen = Vec::new();
    parse_each::<SourceError>(&paths, |p| {
        assert_eq!(p.manifests.services.len(), 1);
        let name = p.manifests.services[0].1.metadata.name.clone().unwrap();
        seen.push((p.path, name));
        Ok(())
    })
    .unwrap();
    let want: Vec<(PathBuf, String)> = (0..n)
        .map(|i| (paths[i].clone(), format!("s{i}")))
        .collect();
    assert_eq!(seen, want);
}

/// A bad file in the second round: the files before it are taken, then its error is
/// returned (the one named first in path order, though a later file is bad too).
#[test]
fn the_first_bad_file_in_order_ends_it() {
    let dir = TempDir::new("files");
    let paths: Vec<PathBuf> = (0..ROUND + 40)
        .map(|i| {
            let p = dir.0.join(format!("s{i:04}.yaml"));
            let text = match i {
                i if i == ROUND + 3 || i == ROUND + 30 => "kind: [unclosed\n".to_string(),
                _ => service(&format!("s{i}")),
            };
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    let mut taken = 0;
    let err = parse_each::<SourceError>(&paths, |_| {
        taken += 1;
        Ok(())
    })
    .unwrap_err();
    assert_eq!(taken, ROUND + 3);
    let msg = err.to_string();
    assert!(msg.contains(&format!("s{:04}.yaml", ROUND + 3)), "{msg}");
}

/// A file of more documents than a round is parsed on several threads: the objects come
/// back in the file's order with its lines, and the first bad document in order is the one
/// the error names.
#[test]
fn a_big_file_of_documents_comes_back_in_order() {
    let dir = TempDir::new("files");
    let n = ROUND * 2 + 17;
    let text: String = (0..n)
        .map(|i| format!("---\n{}", service(&format!("s{i}"))))
        .collect();
    let p = dir.0.join("all.yaml");
    std::fs::write(&p, &text).unwrap();
    let parsed = parse(p.clone()).unwrap();
    let Docs::All(docs) = &parsed.docs else {
        panic!("all documents")
    };
    assert_eq!(docs.len(), n);
    assert!(docs.iter().all(|d| d.kept.is_none()));
    let got: Vec<(u64, String)> = parsed
        .manifests
        .services
        .iter()
        .map(|(o, s)| (o.line, s.metadata.name.clone().unwrap()))
        .collect();
    let want: Vec<(u64, String)> = (0..n)
        .map(|i| (5 * i as u64 + 2, format!("s{i}")))
        .collect();
    assert_eq!(got, want);
    // Parsed again against its own digests: nothing to parse.
    let digests: Vec<Digest> = docs.iter().map(|d| d.digest).collect();
    let again = parse_matched(p.clone(), &digests).unwrap();
    assert!(again.manifests.services.is_empty());
    let Docs::All(docs) = &again.docs else {
        panic!("all documents")
    };
    assert!(
        docs.iter()
            .enumerate()
            .all(|(i, d)| d.kept == Some(i as u32))
    );
    let bad =
        text.replacen("name: s400,", "name: [s400,", 1)
            .replacen("name: s30,", "name: [s30,", 1);
    std::fs::write(&p, bad).unwrap();
    let e = parse(p).err().expect("an error").to_string();
    assert!(e.contains("(in the document at line 151)"), "{e}");
}

/// An error from the caller stops the reading too.
#[test]
fn an_error_from_the_caller_ends_it() {
    let dir = TempDir::new("files");
    let paths: Vec<PathBuf> = (0..10)
        .map(|i| {
            let p = dir.0.join(format!("s{i}.yaml"));
            std::fs::write(&p, service(&format!("s{i}"))).unwrap();
            p
        })
        .collect();
    let mut taken = 0;
    let r = parse_each(&paths, |_| {
        taken += 1;
        if taken == 4 {
            return Err(SourceError::Io {
                path: "x".into(),
                source: std::io::Error::other("stop"),
            });
        }
        Ok(())
    });
    assert!(r.is_err());
    assert_eq!(taken, 4);
}
