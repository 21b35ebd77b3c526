//! Strict field validation of manifests-folder objects, as `kubectl --validate=strict` does: a
//! field the Kubernetes type does not know (a typo such as `spec.prots`) is reported by its path and
//! the object is rejected, instead of being silently dropped by the typed deserialization.
//!
//! How: the object is deserialized into its k8s-openapi type and serialized back; every non-null
//! field of the input that the re-serialization lacks is one the type ignored.
use serde_json::Value;

/// The paths (`spec.ports[0].prot`) of the fields of `input` that `typed` (its typed round trip)
/// lacks, in input order. Null fields count as absent (the type reads them as unset).
pub fn unknown_fields(input: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, typed, &mut String::new(), &mut out);
    out
}

fn walk(input: &Value, typed: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match t.get(k) {
                    Some(tv) => walk(v, tv, path, out),
                    None if !v.is_null() => out.push(path.clone()),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (v, tv)) in i.iter().zip(t).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{n}]"));
                walk(v, tv, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn check(v: Value) -> Vec<String> {
        let s: Service = serde_json::from_value(v.clone()).unwrap();
        unknown_fields(&v, &serde_json::to_value(&s).unwrap())
    }

    #[test]
    fn typos_are_found_by_path_and_known_fields_are_not() {
        let ok = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": "y"}, "annotations": {},
                         "creationTimestamp": null},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80, "targetPort": "http"}],
                     "selector": {}, "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}},
            "status": {"loadBalancer": {}},
        });
        assert!(check(ok).is_empty());
        let bad = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "lables": {"x": "y"}},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}, {"port": 81, "prot": "TCP"}],
                     "externalTraficPolicy": "Local", "typo": null},
        });
        assert_eq!(
            check(bad),
            [
                "metadata.lables",
                "spec.externalTraficPolicy",
                "spec.ports[1].prot"
            ]
        );
    }
}
