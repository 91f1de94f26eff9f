//! `weftctl token create|list|delete`: join tokens a new node trades for its certificate at the
//! controller's join service. etcd keeps only the SHA-256 of each secret; `create` prints the
//! token once, with the CA pin the node checks the controller against.

use super::{print_out, with_store, UsageError};
use clap::Subcommand;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_controller::join::{sign, token};
use weft_controller::output;

/// Longest `--ttl`.
const MAX_TTL_SECS: i64 = 365 * 86400;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a join token; prints it and the CA pin (sha256 of the CA's public key info).
    Create {
        /// How long the token is accepted: 90s, 30m, 1h, 7d (at most 365d).
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        ttl: String,
        /// How many nodes may join with it (default: any number until it expires).
        #[arg(long, value_name = "N")]
        uses: Option<u32>,
        /// The only node name that may join with it.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// The cluster CA's directory (ca.pem), for the pin.
        #[arg(long, env = "WEFT_CA_DIR", default_value = "/etc/weft/pki", value_name = "DIR")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List tokens: id, expiry, uses left, node (never the secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a token; nodes can no longer join with it.
    Delete {
        /// The token id (the 6 characters before the '.').
        id: String,
    },
}

/// What `token create --json` prints.
#[derive(Debug, Serialize)]
struct Created {
    token: String,
    ca_pin: String,
    expires: i64,
    uses: Option<u32>,
    node: Option<String>,
}

/// One row of `token list`.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Listed {
    id: String,
    expires: i64,
    uses_left: Option<u32>,
    node: Option<String>,
    created: i64,
    /// `valid`, `expired`, `used up` or `unreadable: ...`.
    state: String,
}

/// Checks the create flags; errors name the flag.
fn create_request(ttl: &str, uses: Option<u32>, node: &Option<String>) -> Result<token::CreateRequest, UsageError> {
    let ttl_secs = token::parse_duration(ttl).filter(|s| (1..=MAX_TTL_SECS).contains(s)).ok_or_else(|| {
        UsageError::new(format!("--ttl: expected a duration like 90s, 30m, 1h or 7d (at most 365d), found {ttl:?}"))
    })?;
    if uses == Some(0) {
        return Err(UsageError::new("--uses: expected at least 1, found 0"));
    }
    if let Some(n) = node {
        if !sign::valid_node(n) {
            return Err(UsageError::new(format!(
                "--node: expected a node name (lowercase letters, digits, '-', '_' or '.', not all digits and dots), found {n:?}"
            )));
        }
    }
    Ok(token::CreateRequest { ttl_secs, uses, node: node.clone() })
}

fn time_of(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| {
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
        })
        .unwrap_or_else(|_| unix.to_string())
}

fn uses_text(uses: Option<u32>) -> String {
    uses.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

fn rows(records: Vec<(String, Result<token::TokenRecord, token::StoreError>)>, now: i64) -> Vec<Listed> {
    records
        .into_iter()
        .map(|(id, r)| match r {
            Ok(r) => Listed {
                state: if now >= r.expires {
                    "expired".into()
                } else if r.uses_left == Some(0) {
                    "used up".into()
                } else {
                    "valid".into()
                },
                id,
                expires: r.expires,
                uses_left: r.uses_left,
                node: r.node,
                created: r.created,
            },
            Err(e) => {
                Listed { id, expires: 0, uses_left: None, node: None, created: 0, state: format!("unreadable: {e}") }
            }
        })
        .collect()
}

fn render(rows: &[Listed]) -> String {
    if rows.is_empty() {
        return "no tokens\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                if r.expires == 0 { "-".into() } else { time_of(r.expires) },
                uses_text(r.uses_left),
                r.node.clone().unwrap_or_else(|| "any".into()),
                r.state.clone(),
            ]
        })
        .collect();
    output::table(&["ID", "EXPIRES", "USES LEFT", "NODE", "STATE"], &cells)
}

pub fn run(g: &super::Global, cmd: &TokenCmd) -> anyhow::Result<ExitCode> {
    // Check input before connecting, so bad flags exit 2 without touching etcd.
    let opts = super::etcd_opts(g)?;
    let net = g.network.as_str();
    match cmd {
        TokenCmd::Create { ttl, uses, node, dir, json } => {
            let req = create_request(ttl, *uses, node)?;
            let pin = sign::ca_pin(dir).map_err(|e| UsageError::new(format!("--dir: {e:#}")))?;
            with_store(opts, |store| async move {
                let now = output::unix_now() as i64;
                for id in token::prune(&store, net, now).await? {
                    eprintln!("pruned token {id} (expired over a day ago)");
                }
                let t = token::create(&store, net, &req, now).await?;
                let c = Created {
                    token: t.reveal(),
                    ca_pin: pin,
                    expires: now + req.ttl_secs,
                    uses: req.uses,
                    node: req.node.clone(),
                };
                print_out(*json, &c, || {
                    format!(
                        "token:   {}\nca_pin:  {}\nexpires: {} (uses: {}, node: {})\n",
                        c.token,
                        c.ca_pin,
                        time_of(c.expires),
                        uses_text(c.uses),
                        c.node.as_deref().unwrap_or("any")
                    )
                })
            })
        }
        TokenCmd::List { json } => with_store(opts, |store| async move {
            let listed = rows(token::list(&store, net).await?, output::unix_now() as i64);
            print_out(*json, &listed, || render(&listed))
        }),
        TokenCmd::Delete { id } => {
            if !token::valid_id(id) {
                return Err(UsageError::new(format!(
                    "ID: expected a token id ({} characters of a-z or 0-9), found {id:?}",
                    token::ID_LEN
                ))
                .into());
            }
            with_store(opts, |store| async move {
                if token::delete(&store, net, id).await? {
                    outln!("token {id} deleted");
                    Ok(ExitCode::SUCCESS)
                } else {
                    anyhow::bail!("no token {id} in network {net}")
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_flags_are_checked() {
        let r = create_request("1h", Some(3), &Some("n1".into())).expect("valid");
        assert_eq!(r, token::CreateRequest { ttl_secs: 3600, uses: Some(3), node: Some("n1".into()) });
        let e = |ttl: &str, uses: Option<u32>, node: Option<&str>| {
            create_request(ttl, uses, &node.map(str::to_string)).expect_err("refused").to_string()
        };
        assert!(e("1w", None, None).starts_with("--ttl: expected a duration"));
        assert!(e("0s", None, None).starts_with("--ttl: "));
        assert!(e("366d", None, None).starts_with("--ttl: "));
        assert_eq!(e("1h", Some(0), None), "--uses: expected at least 1, found 0");
        assert!(e("1h", None, Some("N1")).starts_with("--node: expected a node name"));
    }

    #[test]
    fn list_shows_state_and_never_secrets() {
        let t = token::Token::parse("abc123.0123456789abcdef").expect("token");
        let now = 1_800_000_000;
        let rec = |uses, node: Option<&str>, ttl| {
            token::TokenRecord::new(
                &t,
                &token::CreateRequest { ttl_secs: ttl, uses, node: node.map(str::to_string) },
                now - 100,
            )
        };
        let listed = rows(
            vec![
                ("aaaaaa".into(), Ok(rec(None, None, 3600))),
                ("bbbbbb".into(), Ok(rec(Some(0), Some("n2"), 3600))),
                ("cccccc".into(), Ok(rec(Some(2), None, 10))),
            ],
            now,
        );
        let states: Vec<&str> = listed.iter().map(|l| l.state.as_str()).collect();
        assert_eq!(states, vec!["valid", "used up", "expired"]);
        let text = render(&listed);
        assert!(text.starts_with("ID      EXPIRES"), "{text}");
        assert!(text.contains("unlimited") && text.contains("n2"), "{text}");
        let json = serde_json::to_string(&listed).expect("json");
        for out in [&text, &json] {
            assert!(!out.contains("0123456789abcdef") && !out.contains(&t.secret_sha256()), "{out}");
        }
    }
}
