//! `oxilium monitor`: follows the agent's event stream (`GET /events`) live, filtered by the
//! agent; prints one human line per record, or with `-o json` the records as the agent sends
//! them (one JSON object per line). `oxilium events trace on|off` switches the datapath's trace
//! points; `oxilium events status` shows the events' counters.
use super::{ClientArgs, Output};
use crate::events::{filter::Filter, wire};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(clap::Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub filter: Filter,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
}

#[derive(clap::Subcommand)]
pub enum EventsCmd {
    /// Switch the datapath's per-packet trace points on or off (at once, without reloading).
    Trace {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The events' switches and counters (written, lost, drained).
    Status(ClientArgs),
}

pub fn events(cmd: EventsCmd) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (client, v) = match cmd {
        EventsCmd::Trace { state, client } => {
            let path = format!("/events/trace?on={}", state == "on");
            let v = rt.block_on(crate::api::request(
                &client.socket,
                hyper::Method::POST,
                &path,
            ))?;
            (client, v)
        }
        EventsCmd::Status(client) => {
            let v = rt.block_on(crate::api::get(&client.socket, "/status"))?;
            (client, v["events"].clone())
        }
    };
    match client.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Text => {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    println!("{k:<18} {v}");
                }
            }
        }
    }
    Ok(())
}

pub fn run(args: &MonitorArgs) -> Result<()> {
    args.filter.check()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(follow(args))
}

async fn follow(args: &MonitorArgs) -> Result<()> {
    let socket = &args.client.socket;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "connecting to the agent at {} (is it running? are you root?)",
                socket.display()
            )
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(format!("/events?{}", args.filter.to_query()))
        .header("host", "oxilium")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let b = body.collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        anyhow::bail!("{}", v["error"].as_str().unwrap_or("request failed"));
    }
    let format = match args.client.output {
        Output::Json => wire::Format::Json,
        Output::Text => wire::Format::Text,
    };
    let mut printer = wire::Printer::new(format, args.count, &socket.display().to_string());
    let mut out = wire::sink(std::io::stdout().lock());
    let mut notes = std::io::stderr();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if printer.feed(&data, &mut out, &mut notes)? {
            return Ok(());
        }
    }
    Ok(())
}
