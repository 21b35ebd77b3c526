//! `oxilium maglev table`: the Maglev table for a backend set, offline.
use super::Output;
use anyhow::{Context, Result, bail};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct TableArgs {
    /// Table size M: a prime from 251 to 131071.
    #[arg(long, default_value_t = lb::maglev::DEFAULT_SIZE)]
    pub size: u32,
    /// Hash seed (the config file's maglev_seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// ADDR[:WEIGHT]; ADDR is used as given (e.g. 10.0.0.1, 10.0.0.1:8080:2, [fd00::1]:80:3).
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Splits `ADDR[:WEIGHT]`: a trailing `:N` is a weight unless the whole is an IPv6 address.
pub fn parse_backend(s: &str) -> Result<(String, u32)> {
    if s.is_empty() {
        bail!("--backend: empty value");
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), 1));
    }
    match s.rsplit_once(':') {
        Some((addr, w))
            if !addr.is_empty() && !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) =>
        {
            let weight: u32 = w
                .parse()
                .with_context(|| format!("--backend {s}: weight {w}"))?;
            if weight == 0 || weight > 65535 {
                bail!("--backend {s}: weight must be 1..=65535, got {weight}");
            }
            Ok((addr.to_string(), weight))
        }
        _ => Ok((s.to_string(), 1)),
    }
}

pub fn run(args: &TableArgs) -> Result<()> {
    if !lb::maglev::is_valid_size(args.size) {
        bail!("--size: {} is not a prime from 251 to 131071", args.size);
    }
    let parsed: Vec<(String, u32)> = args
        .backends
        .iter()
        .map(|b| parse_backend(b))
        .collect::<Result<_>>()?;
    let input: Vec<lb::maglev::Backend> = parsed
        .iter()
        .map(|(k, w)| lb::maglev::Backend { key: k, weight: *w })
        .collect();
    let table = lb::maglev::build(&input, args.size, args.seed)
        .map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
    let names: Vec<&str> = table
        .iter()
        .map(|&i| parsed[i as usize].0.as_str())
        .collect();
    match args.output {
        Output::Json => println!("{}", json!({ "size": args.size, "table": names })),
        Output::Text => {
            println!("size {} seed {}", args.size, args.seed);
            for (addr, w) in &parsed {
                let n = names.iter().filter(|x| **x == addr).count();
                println!(
                    "{addr:<40} weight {w:<6} slots {n:<7} ({:.2}%)",
                    100.0 * n as f64 / args.size as f64
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_backend;

    #[test]
    fn backend_weights() {
        assert_eq!(parse_backend("10.0.0.1").unwrap(), ("10.0.0.1".into(), 1));
        assert_eq!(parse_backend("10.0.0.1:3").unwrap(), ("10.0.0.1".into(), 3));
        assert_eq!(
            parse_backend("10.0.0.1:8080:2").unwrap(),
            ("10.0.0.1:8080".into(), 2)
        );
        assert_eq!(parse_backend("fd00::1").unwrap(), ("fd00::1".into(), 1));
        assert_eq!(
            parse_backend("[fd00::1]:80:4").unwrap(),
            ("[fd00::1]:80".into(), 4)
        );
        assert!(parse_backend("10.0.0.1:0").is_err());
        assert!(parse_backend("").is_err());
    }
}
