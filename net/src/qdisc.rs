//! Root queueing disciplines of the node's devices: `sch_fq` for the bandwidth manager's
//! earliest-departure-time pacing (its programs stamp `skb->tstamp`; fq holds each packet until
//! then). Whether the kernel has `sch_fq` is found by asking it: a kernel without the module
//! refuses the qdisc kind with ENOENT.
use crate::{Error, Netlink, Result};
use futures::StreamExt;
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage, TcOption},
};
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};

/// fq's netlink options (include/uapi/linux/pkt_sched.h, `TCA_FQ_*`).
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

/// ENOENT: the kernel does not know the qdisc kind (no `sch_fq`).
const ENOENT: i32 = 2;

/// The request of `tc qdisc replace dev <ifindex> root fq horizon <horizon_us>us horizon_drop`:
/// packets stamped beyond the horizon are dropped rather than capped.
pub fn fq_request(ifindex: u32, horizon_us: u32) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.parent = TcHandle::ROOT;
    m.attributes.push(TcAttribute::Kind("fq".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::Other(DefaultNla::new(
            TCA_FQ_HORIZON,
            horizon_us.to_ne_bytes().to_vec(),
        )),
        TcOption::Other(DefaultNla::new(TCA_FQ_HORIZON_DROP, vec![1])),
    ]));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    req.finalize();
    req
}

/// Makes fq the root qdisc of `ifindex`. Ok(false): the kernel has no `sch_fq`.
pub async fn set_fq(nl: &Netlink, ifindex: u32, horizon_us: u32) -> Result<bool> {
    let what = "setting the fq qdisc";
    let mut answers = nl
        .handle()
        .clone()
        .request(fq_request(ifindex, horizon_us))
        .map_err(|e| Error::from_netlink(what, e))?;
    while let Some(m) = answers.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            let e = Error::from_netlink(what, rtnetlink::Error::NetlinkError(e));
            if e.errno() == Some(ENOENT) {
                return Ok(false);
            }
            return Err(e);
        }
    }
    Ok(true)
}

/// The kind of `ifindex`'s root qdisc (`noqueue`, `fq`, `pfifo_fast`, ...), None when the
/// device has none.
pub async fn root_kind(nl: &Netlink, ifindex: u32) -> Result<Option<String>> {
    let mut dump = nl.handle().qdisc().get().index(ifindex as i32).execute();
    while let Some(m) = dump.next().await {
        let m = m.map_err(|e| Error::from_netlink("listing qdiscs", e))?;
        if m.header.index != ifindex as i32 || m.header.parent != TcHandle::ROOT {
            continue;
        }
        return Ok(m.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{NetlinkDeserializable, NetlinkSerializable};

    /// The fq setup as the kernel receives it (this kernel has no `sch_fq`: the request is
    /// checked byte for byte through the message codec rather than by the kernel).
    #[test]
    fn fq_request_is_a_root_fq_with_horizon_drop() {
        let req = fq_request(7, 2_000_000);
        assert_eq!(
            req.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        let NetlinkPayload::InnerMessage(inner) = &req.payload else {
            panic!("not a route message");
        };
        let mut buf = vec![0u8; inner.buffer_len()];
        inner.serialize(&mut buf);
        assert_eq!(req.header.message_type, 36, "RTM_NEWQDISC");
        let back = RouteNetlinkMessage::deserialize(&req.header, &buf).expect("the kernel's codec");
        let RouteNetlinkMessage::NewQueueDiscipline(m) = back else {
            panic!("not RTM_NEWQDISC: {back:?}");
        };
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.parent, TcHandle::ROOT);
        assert!(m.attributes.contains(&TcAttribute::Kind("fq".into())));
        // TCA_OPTIONS holds, as fq reads them: horizon 2 s in µs (u32), horizon_drop on (u8).
        let mut horizon = vec![8, 0, TCA_FQ_HORIZON as u8, 0];
        horizon.extend(2_000_000u32.to_ne_bytes());
        let drop = [5, 0, TCA_FQ_HORIZON_DROP as u8, 0, 1];
        let at = |pat: &[u8]| buf.windows(pat.len()).position(|w| w == pat);
        let (h, d) = (
            at(&horizon).expect("horizon"),
            at(&drop).expect("horizon_drop"),
        );
        assert_eq!(d, h + 8, "horizon_drop follows horizon in one TCA_OPTIONS");
        assert!(
            m.attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Options(_)))
        );
    }
}
