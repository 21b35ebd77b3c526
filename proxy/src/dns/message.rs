//! The DNS messages the proxy looks into (hickory-proto does the wire format): the question of a
//! query, the REFUSED answer, and the addresses an answer carries for the names of its CNAME chain.
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

/// A query's single question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: RecordType,
}

/// Why a message is not a query the proxy handles.
#[derive(Debug, PartialEq, Eq)]
pub enum BadQuery {
    /// Not DNS at all: dropped.
    Unparsable,
    /// DNS, but not one question (answered FORMERR).
    NotOneQuestion(Box<Message>),
}

/// Parses a query: exactly one question.
pub fn question(bytes: &[u8]) -> Result<(Message, Question), BadQuery> {
    let m = Message::from_vec(bytes).map_err(|_| BadQuery::Unparsable)?;
    if m.message_type != MessageType::Query {
        return Err(BadQuery::Unparsable);
    }
    let [q] = m.queries.as_slice() else {
        return Err(BadQuery::NotOneQuestion(Box::new(m)));
    };
    let q = Question {
        name: canonical(&q.name.to_ascii()),
        qtype: q.query_type,
    };
    Ok((m, q))
}

/// Lower case, no trailing dot.
pub fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The answer to `query` with `code` and no records (REFUSED, FORMERR, SERVFAIL).
pub fn error_response(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(query.id, query.op_code, code);
    m.metadata.recursion_desired = query.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(query.queries.iter().cloned());
    m.to_vec().unwrap_or_default()
}

/// What an answer teaches: `names` (the question and every name of its CNAME chain) resolve to
/// `ips` for `ttl` (the smallest TTL along the chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learnt {
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ttl: Duration,
}

/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

/// The addresses a NOERROR answer gives `question`, following CNAMEs from it; None when it carries
/// no address (an error, an empty answer, another record type).
pub fn learnt(answer: &[u8], question: &Question) -> Option<Learnt> {
    let m = Message::from_vec(answer).ok()?;
    if m.response_code != ResponseCode::NoError {
        return None;
    }
    let records: Vec<(String, &RData, u32)> = m
        .answers
        .iter()
        .map(|r| (canonical(&r.name.to_ascii()), &r.data, r.ttl))
        .collect();
    let mut names = vec![question.name.clone()];
    let mut ttl = u32::MAX;
    let mut seen = BTreeSet::new();
    let mut ips = BTreeSet::new();
    while names.len() <= MAX_CHAIN {
        let cur = names.last().expect("non-empty").clone();
        if !seen.insert(cur.clone()) {
            break;
        }
        let mut next = None;
        for (_, data, t) in records.iter().filter(|(n, ..)| *n == cur) {
            match data {
                RData::A(a) => {
                    ips.insert(IpAddr::V4(a.0));
                    ttl = ttl.min(*t);
                }
                RData::AAAA(a) => {
                    ips.insert(IpAddr::V6(a.0));
                    ttl = ttl.min(*t);
                }
                RData::CNAME(c) => {
                    ttl = ttl.min(*t);
                    next = Some(canonical(&c.0.to_ascii()));
                }
                _ => {}
            }
        }
        match next {
            Some(n) => names.push(n),
            None => break,
        }
    }
    names.dedup();
    (!ips.is_empty()).then(|| Learnt {
        names,
        ips: ips.into_iter().collect(),
        ttl: Duration::from_secs(u64::from(ttl)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::{Name, Record};
    use std::str::FromStr;

    fn query(name: &str) -> Message {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m
    }

    fn answer(q: &Message, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::response(q.id, OpCode::Query);
        m.add_queries(q.queries.iter().cloned());
        m.add_answers(records);
        m.to_vec().unwrap()
    }

    fn rec(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
    }

    #[test]
    fn question_and_refused() {
        let q = query("Allowed.Example.");
        let (m, qn) = question(&q.to_vec().unwrap()).unwrap();
        assert_eq!(qn.name, "allowed.example");
        assert_eq!(qn.qtype, RecordType::A);
        let r = Message::from_vec(&error_response(&m, ResponseCode::Refused)).unwrap();
        assert_eq!((r.id, r.response_code), (7, ResponseCode::Refused));
        assert_eq!(r.message_type, MessageType::Response);
        assert_eq!(r.queries, q.queries);
        assert_eq!(question(b"\x00\x01garbage"), Err(BadQuery::Unparsable));
        let mut two = query("a.example");
        two.add_query(Query::query(
            Name::from_str("b.example").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            question(&two.to_vec().unwrap()),
            Err(BadQuery::NotOneQuestion(_))
        ));
    }

    #[test]
    fn cname_chain_is_followed() {
        let q = query("www.allowed.example.");
        let (_, qn) = question(&q.to_vec().unwrap()).unwrap();
        let a = answer(
            &q,
            vec![
                rec(
                    "www.allowed.example.",
                    300,
                    RData::CNAME(CNAME(Name::from_str("edge.cdn.example.").unwrap())),
                ),
                rec(
                    "edge.cdn.example.",
                    60,
                    RData::CNAME(CNAME(Name::from_str("n1.cdn.example.").unwrap())),
                ),
                rec("n1.cdn.example.", 120, RData::A(A::new(192, 0, 2, 1))),
                rec(
                    "n1.cdn.example.",
                    120,
                    RData::AAAA(AAAA::from_str("2001:db8::1").unwrap()),
                ),
                // Not on the chain: ignored.
                rec("other.example.", 5, RData::A(A::new(192, 0, 2, 99))),
                rec("n1.cdn.example.", 1, RData::TXT(TXT::new(vec!["x".into()]))),
            ],
        );
        let l = learnt(&a, &qn).unwrap();
        assert_eq!(
            l.names,
            ["www.allowed.example", "edge.cdn.example", "n1.cdn.example"]
        );
        assert_eq!(
            l.ips,
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        assert_eq!(l.ttl, Duration::from_secs(60));
    }

    #[test]
    fn nothing_learnt_from_errors_loops_and_empty_answers() {
        let q = query("loop.example.");
        let (m, qn) = question(&q.to_vec().unwrap()).unwrap();
        assert_eq!(
            learnt(&error_response(&m, ResponseCode::NXDomain), &qn),
            None
        );
        assert_eq!(learnt(&answer(&q, vec![]), &qn), None);
        let cname = |t: &str| RData::CNAME(CNAME(Name::from_str(t).unwrap()));
        let looped = answer(
            &q,
            vec![
                rec("loop.example.", 9, cname("loop2.example.")),
                rec("loop2.example.", 9, cname("loop.example.")),
            ],
        );
        assert_eq!(learnt(&looped, &qn), None);
        assert_eq!(learnt(b"junk", &qn), None);
    }
}
