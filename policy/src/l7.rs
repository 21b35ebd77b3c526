//! Evaluation of HTTP rules against a request (what the proxy decides; offline verdicts use it too).
use crate::api::cilium::HttpRule;

/// An HTTP request as far as policy looks at it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    /// (name, value); names compare case-insensitively.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Does `rule` allow `req`? Every field the rule sets must match.
pub fn http_rule_matches(rule: &HttpRule, req: &HttpRequest) -> bool {
    if let Some(m) = &rule.method
        && !m.is_match(&req.method)
    {
        return false;
    }
    if let Some(p) = &rule.path
        && !p.is_match(&req.path)
    {
        return false;
    }
    if let Some(h) = &rule.host
        && !req.host.as_deref().is_some_and(|host| h.is_match(host))
    {
        return false;
    }
    for h in &rule.headers {
        let ok = match h.split_once(':') {
            Some((n, v)) => req.header(n.trim()) == Some(v.trim()),
            None => req.header(h.trim()).is_some(),
        };
        if !ok {
            return false;
        }
    }
    // A headerMatch with a mismatch action only makes the proxy log or rewrite; without one it denies.
    rule.header_matches
        .iter()
        .filter(|m| m.mismatch.is_none())
        .all(|m| match (&m.value, req.header(&m.name)) {
            (Some(v), Some(got)) => v == got,
            (None, got) => got.is_some(),
            (Some(_), None) => false,
        })
}

/// The first rule allowing `req`, if any.
pub fn http_allows<'a>(rules: &'a [HttpRule], req: &HttpRequest) -> Option<&'a HttpRule> {
    rules.iter().find(|r| http_rule_matches(r, req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: serde_json::Value) -> HttpRule {
        serde_json::from_value(v).unwrap()
    }

    fn req(m: &str, p: &str) -> HttpRequest {
        HttpRequest {
            method: m.into(),
            path: p.into(),
            ..Default::default()
        }
    }

    #[test]
    fn method_path_host_headers() {
        let r = rule(json!({"method": "POST", "path": "/v1/request-landing"}));
        assert!(http_rule_matches(&r, &req("POST", "/v1/request-landing")));
        assert!(!http_rule_matches(&r, &req("PUT", "/v1/exhaust-port")));
        assert!(!http_rule_matches(&r, &req("POST", "/v1/request-landing2")));
        let r = rule(json!({
            "path": "/public/.*",
            "host": "api\\.example\\.com",
            "headers": ["X-Token: abc", "X-Trace"],
        }));
        let mut q = req("GET", "/public/x");
        assert!(!http_rule_matches(&r, &q));
        q.host = Some("api.example.com".into());
        q.headers = vec![
            ("x-token".into(), "abc".into()),
            ("X-Trace".into(), "1".into()),
        ];
        assert!(http_rule_matches(&r, &q));
        let r = rule(json!({"headerMatches": [{"name": "X-Role", "value": "admin"}]}));
        assert!(!http_rule_matches(&r, &req("GET", "/")));
        let r = rule(
            json!({"headerMatches": [{"name": "X-Role", "value": "admin", "mismatch": "LOG"}]}),
        );
        assert!(http_rule_matches(&r, &req("GET", "/")));
        assert!(http_allows(&[], &req("GET", "/")).is_none());
    }
}
