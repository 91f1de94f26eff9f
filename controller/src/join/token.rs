//! Join tokens: `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`, like kubeadm's), made from
//! the system CSPRNG. etcd keeps one record per token at `tokens/<id>` with only the SHA-256 of
//! the secret (see [`TokenRecord`]); the secret is printed once by `weftctl token create` and
//! never stored or logged.
//!
//! [`check`] is the pure decision (format, known, secret, expiry, uses, node) and returns a
//! typed [`Refusal`]; [`consume`] is the shell that reads the record, checks it and takes one
//! use with a compare on the record's mod revision (retrying on a conflict).
//!
//! A token whose uses run out is kept with `uses_left: 0` (so a late attempt hears "used up",
//! not "unknown"); records are removed by `weftctl token delete`, and `weftctl token create`
//! prunes records that expired more than [`PRUNE_AFTER_SECS`] ago.

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::fmt;
use weft_config::Keys;
use weft_store::Store;

/// Length of the id part.
pub const ID_LEN: usize = 6;
/// Length of the secret part.
pub const SECRET_LEN: usize = 16;
/// Schema of [`TokenRecord`].
pub const SCHEMA: u32 = 1;
/// `weftctl token create` removes records that expired this long ago.
pub const PRUNE_AFTER_SECS: i64 = 24 * 3600;
/// Attempts of [`consume`] against concurrent writers before it gives up.
const CONSUME_ATTEMPTS: usize = 16;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A token as typed by an operator: `<id>.<secret>`. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.****)", self.id)
    }
}

/// Why a token text is not a token. Messages never repeat the text (it may be a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FormatError {
    #[error("expected <id>.<secret>, found no '.'")]
    NoDot,
    #[error("the id before the '.' must be {ID_LEN} characters of a-z or 0-9")]
    BadId,
    #[error("the secret after the '.' must be {SECRET_LEN} characters of a-z or 0-9")]
    BadSecret,
}

fn well_formed(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// True for a string that can be a token id (what `weftctl token delete` takes).
pub fn valid_id(id: &str) -> bool {
    well_formed(id, ID_LEN)
}

impl Token {
    /// Parses `<id>.<secret>`; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let (id, secret) = text.trim().split_once('.').ok_or(FormatError::NoDot)?;
        if !well_formed(id, ID_LEN) {
            return Err(FormatError::BadId);
        }
        if !well_formed(secret, SECRET_LEN) {
            return Err(FormatError::BadSecret);
        }
        Ok(Self { id: id.to_string(), secret: secret.to_string() })
    }

    /// A new token from the system CSPRNG.
    pub fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        Ok(Self { id: random_text(&rng, ID_LEN)?, secret: random_text(&rng, SECRET_LEN)? })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full token text, secret included: only for printing it once to the operator.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// Hex SHA-256 of the secret, as stored.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

/// `len` characters of [`ALPHABET`], uniformly (bytes of 252 and above are drawn again).
fn random_text(rng: &SystemRandom, len: usize) -> anyhow::Result<String> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        for b in buf {
            if out.len() < len && b < 252 {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Ok(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal lengths and bytes, in time that depends only on the length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The etcd record `tokens/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub schema: u32,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Unix seconds after which the token is refused.
    pub expires: i64,
    /// Uses left; `None`: any number until it expires.
    pub uses_left: Option<u32>,
    /// The only node name the token may join; `None`: any.
    pub node: Option<String>,
    /// Unix seconds.
    pub created: i64,
    /// The latest uses of a counted token (at most [`MAX_SPENT_BY`]): a node whose answer was
    /// lost asks again with the same key and is answered without spending another use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spent_by: Vec<Spent>,
}

/// One use of a counted token: the node and the SHA-256 of the key it was signed for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    pub node: String,
    pub key_sha256: String,
}

/// Uses remembered per token for retries.
pub const MAX_SPENT_BY: usize = 16;

/// What `weftctl token create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub ttl_secs: i64,
    pub uses: Option<u32>,
    pub node: Option<String>,
}

impl TokenRecord {
    pub fn new(token: &Token, req: &CreateRequest, now: i64) -> Self {
        Self {
            schema: SCHEMA,
            secret_sha256: token.secret_sha256(),
            expires: now + req.ttl_secs,
            uses_left: req.uses,
            node: req.node.clone(),
            created: now,
            spent_by: Vec::new(),
        }
    }
}

/// Why a join was refused. [`Refusal::reason`] is the metric label and the JSON `error` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    #[error("the token is malformed: {0}")]
    BadFormat(FormatError),
    #[error("no such token (it was never made, or was deleted)")]
    Unknown,
    #[error("the token's secret is wrong")]
    WrongSecret,
    #[error("the token has expired")]
    Expired,
    #[error("the token has no uses left")]
    UsedUp,
    #[error("the token is for another node")]
    WrongNode,
}

impl Refusal {
    /// Every reason, for pre-registering metric labels.
    pub const REASONS: [&'static str; 6] =
        ["bad_format", "unknown", "wrong_secret", "expired", "used_up", "wrong_node"];

    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadFormat(_) => "bad_format",
            Refusal::Unknown => "unknown",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::Expired => "expired",
            Refusal::UsedUp => "used_up",
            Refusal::WrongNode => "wrong_node",
        }
    }
}

/// The decision: may `token` join `node` at `now`, given the stored record (`None`: no record)?
/// The secret is checked before anything else about the record, so without it a caller learns
/// only that the id exists.
pub fn check(record: Option<&TokenRecord>, token: &Token, node: &str, now: i64) -> Result<(), Refusal> {
    let r = record.ok_or(Refusal::Unknown)?;
    if !constant_time_eq(token.secret_sha256().as_bytes(), r.secret_sha256.as_bytes()) {
        return Err(Refusal::WrongSecret);
    }
    if now >= r.expires {
        return Err(Refusal::Expired);
    }
    if r.uses_left == Some(0) {
        return Err(Refusal::UsedUp);
    }
    if r.node.as_deref().is_some_and(|n| n != node) {
        return Err(Refusal::WrongNode);
    }
    Ok(())
}

/// Errors of the token store functions.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key}: not a token record: {source}")]
    Decode { key: String, source: serde_json::Error },
    #[error("{0:#}")]
    Store(#[from] anyhow::Error),
    #[error("{key}: changed by others {CONSUME_ATTEMPTS} times in a row; try again")]
    Contended { key: String },
}

fn decode(key: &str, value: &[u8]) -> Result<TokenRecord, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Decode { key: key.to_string(), source })
}

fn encode(r: &TokenRecord) -> Vec<u8> {
    // A struct of plain fields always serializes.
    serde_json::to_vec(r).unwrap_or_default()
}

/// Writes a new token's record (a fresh id if the drawn one exists). Returns the token.
pub async fn create<S: Store>(store: &S, network: &str, req: &CreateRequest, now: i64) -> anyhow::Result<Token> {
    let keys = Keys::new(network);
    for _ in 0..8 {
        let token = Token::generate()?;
        let record = TokenRecord::new(&token, req, now);
        if store.create(&keys.token(token.id()), encode(&record), 0).await? {
            return Ok(token);
        }
    }
    anyhow::bail!("could not find a free token id in 8 draws")
}

/// Every token record, sorted by id; records that do not decode are returned as errors in
/// place, so one bad record does not hide the others.
pub async fn list<S: Store>(
    store: &S,
    network: &str,
) -> anyhow::Result<Vec<(String, Result<TokenRecord, StoreError>)>> {
    let keys = Keys::new(network);
    let prefix = keys.tokens_prefix();
    let (records, _) = store.list(&prefix).await?;
    Ok(records
        .into_iter()
        .map(|r| {
            let id = r.key.strip_prefix(&prefix).unwrap_or(&r.key).to_string();
            let rec = decode(&r.key, &r.value);
            (id, rec)
        })
        .collect())
}

/// Deletes `tokens/<id>`. Returns whether it existed.
pub async fn delete<S: Store>(store: &S, network: &str, id: &str) -> anyhow::Result<bool> {
    store.delete(&Keys::new(network).token(id)).await
}

/// Deletes records that expired more than [`PRUNE_AFTER_SECS`] before `now` (each only if it
/// is still the record that was read). Returns the ids removed.
pub async fn prune<S: Store>(store: &S, network: &str, now: i64) -> anyhow::Result<Vec<String>> {
    let keys = Keys::new(network);
    let prefix = keys.tokens_prefix();
    let (records, _) = store.list(&prefix).await?;
    let mut gone = Vec::new();
    for r in records {
        let Ok(rec) = decode(&r.key, &r.value) else { continue };
        if rec.expires + PRUNE_AFTER_SECS < now && store.delete_if(&r.key, r.value.clone()).await? {
            gone.push(r.key.strip_prefix(&prefix).unwrap_or(&r.key).to_string());
        }
    }
    Ok(gone)
}

/// Checks `token` for `node` at `now` without taking a use (before the request is looked at
/// further). A used-up token passes when `node` spent one of its uses: it may be asking again
/// with the same key, which [`consume`] decides. `Ok(Err(_))` is a refusal.
pub async fn lookup<S: Store>(
    store: &S,
    network: &str,
    token: &Token,
    node: &str,
    now: i64,
) -> Result<Result<(), Refusal>, StoreError> {
    let key = Keys::new(network).token(token.id());
    let record = match store.get(&key).await? {
        Some(r) => Some(decode(&key, &r.value)?),
        None => None,
    };
    Ok(match check(record.as_ref(), token, node, now) {
        Err(Refusal::UsedUp) if record.is_some_and(|r| r.spent_by.iter().any(|s| s.node == node)) => Ok(()),
        other => other,
    })
}

/// Looks `token` up, checks it for `node` at `now` and takes one use for the key whose
/// SHA-256 is `key_sha256` (a compare on the record's mod revision; a conflict reads again and
/// re-checks). The same node asking again with the same key (its answer was lost) is let
/// through without taking another. `Ok(Err(_))` is a refusal.
pub async fn consume<S: Store>(
    store: &S,
    network: &str,
    token: &Token,
    node: &str,
    key_sha256: &str,
    now: i64,
) -> Result<Result<(), Refusal>, StoreError> {
    let key = Keys::new(network).token(token.id());
    let me = Spent { node: node.to_string(), key_sha256: key_sha256.to_string() };
    for _ in 0..CONSUME_ATTEMPTS {
        let raw = store.get(&key).await?;
        let record = match &raw {
            Some(r) => Some(decode(&key, &r.value)?),
            None => None,
        };
        match check(record.as_ref(), token, node, now) {
            Ok(()) => {}
            Err(Refusal::UsedUp) if record.as_ref().is_some_and(|r| r.spent_by.contains(&me)) => return Ok(Ok(())),
            Err(refusal) => return Ok(Err(refusal)),
        }
        let (Some(raw), Some(mut record)) = (raw, record) else { return Ok(Err(Refusal::Unknown)) };
        let Some(left) = record.uses_left else { return Ok(Ok(())) };
        if record.spent_by.contains(&me) {
            return Ok(Ok(()));
        }
        record.uses_left = Some(left.saturating_sub(1));
        record.spent_by.push(me.clone());
        let excess = record.spent_by.len().saturating_sub(MAX_SPENT_BY);
        record.spent_by.drain(..excess);
        if store.replace(&key, encode(&record), 0, raw.mod_revision).await? {
            return Ok(Ok(()));
        }
    }
    Err(StoreError::Contended { key })
}

/// `--ttl` values: `90s`, `30m`, `1h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86400),
        _ => (s, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<i64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_store::MemStore;

    const NOW: i64 = 1_800_000_000;

    fn token() -> Token {
        Token::parse("abc123.0123456789abcdef").expect("valid")
    }

    fn record(uses: Option<u32>, node: Option<&str>) -> TokenRecord {
        TokenRecord::new(&token(), &CreateRequest { ttl_secs: 3600, uses, node: node.map(str::to_string) }, NOW - 10)
    }

    #[test]
    fn parse_accepts_only_the_format() {
        let t = token();
        assert_eq!(t.id(), "abc123");
        assert_eq!(t.reveal(), "abc123.0123456789abcdef");
        assert_eq!(Token::parse("  abc123.0123456789abcdef\n"), Ok(t.clone()));
        assert_eq!(Token::parse("abc1230123456789abcdef"), Err(FormatError::NoDot));
        assert_eq!(Token::parse("abc12.0123456789abcdef"), Err(FormatError::BadId));
        assert_eq!(Token::parse("ABC123.0123456789abcdef"), Err(FormatError::BadId));
        assert_eq!(Token::parse("abc123.0123456789abcde"), Err(FormatError::BadSecret));
        assert_eq!(Token::parse("abc123.0123456789abcdeF"), Err(FormatError::BadSecret));
        assert_eq!(Token::parse("abc123.0123456789abcdef0"), Err(FormatError::BadSecret));
        assert_eq!(Token::parse("abc123.0123456789.bcdef"), Err(FormatError::BadSecret));
        assert_eq!(Token::parse(""), Err(FormatError::NoDot));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = format!("{:?}", token());
        assert!(!s.contains("0123456789abcdef"), "{s}");
        assert!(s.contains("abc123"), "{s}");
        let e = Token::parse("abc123.0123456789abcdeZ").expect_err("bad");
        assert!(!e.to_string().contains("0123456789"), "{e}");
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = Token::generate().expect("rng");
        let b = Token::generate().expect("rng");
        assert_eq!(Token::parse(&a.reveal()), Ok(a.clone()));
        assert_ne!(a, b);
        assert!(valid_id(a.id()));
        // The record keeps only the hash.
        let r = TokenRecord::new(&a, &CreateRequest { ttl_secs: 60, uses: None, node: None }, NOW);
        let json = String::from_utf8(encode(&r)).expect("utf8");
        assert!(!json.contains(&a.reveal()[7..]), "{json}");
        assert_eq!(r.secret_sha256.len(), 64);
    }

    #[test]
    fn record_json_is_the_documented_schema() {
        let r = record(Some(2), Some("n1"));
        let v: serde_json::Value = serde_json::from_slice(&encode(&r)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "schema": 1,
                "secret_sha256": sha256_hex(b"0123456789abcdef"),
                "expires": NOW - 10 + 3600,
                "uses_left": 2,
                "node": "n1",
                "created": NOW - 10,
            })
        );
        let unlimited: serde_json::Value = serde_json::from_slice(&encode(&record(None, None))).expect("json");
        assert_eq!(unlimited["uses_left"], serde_json::Value::Null);
        assert_eq!(unlimited["node"], serde_json::Value::Null);
    }

    #[test]
    fn check_returns_each_refusal() {
        let t = token();
        let ok = record(Some(1), None);
        assert_eq!(check(Some(&ok), &t, "n1", NOW), Ok(()));
        assert_eq!(check(None, &t, "n1", NOW), Err(Refusal::Unknown));
        let other = Token::parse("abc123.ffffffffffffffff").expect("valid");
        assert_eq!(check(Some(&ok), &other, "n1", NOW), Err(Refusal::WrongSecret));
        assert_eq!(check(Some(&ok), &t, "n1", NOW - 10 + 3600), Err(Refusal::Expired));
        assert_eq!(check(Some(&ok), &t, "n1", NOW - 10 + 3599), Ok(()));
        assert_eq!(check(Some(&record(Some(0), None)), &t, "n1", NOW), Err(Refusal::UsedUp));
        assert_eq!(check(Some(&record(None, Some("n2"))), &t, "n1", NOW), Err(Refusal::WrongNode));
        assert_eq!(check(Some(&record(None, Some("n2"))), &t, "n2", NOW), Ok(()));
        // The secret comes first: a wrong secret on an expired token says "wrong secret".
        assert_eq!(check(Some(&ok), &other, "n1", NOW + 7200), Err(Refusal::WrongSecret));
        let reasons: Vec<&str> = [
            Refusal::BadFormat(FormatError::NoDot),
            Refusal::Unknown,
            Refusal::WrongSecret,
            Refusal::Expired,
            Refusal::UsedUp,
            Refusal::WrongNode,
        ]
        .iter()
        .map(Refusal::reason)
        .collect();
        assert_eq!(reasons, Refusal::REASONS);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("1h"), Some(3600));
        assert_eq!(parse_duration("7d"), Some(7 * 86400));
        for bad in ["", "h", "1.5h", "-1h", "1w", "1 h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn consume_counts_down_and_keeps_a_used_up_record() {
        let store = MemStore::new();
        let req = CreateRequest { ttl_secs: 3600, uses: Some(2), node: None };
        let t = create(&store, "net", &req, NOW).await.expect("create");
        assert_eq!(consume(&store, "net", &t, "n1", "k1", NOW).await.expect("store"), Ok(()));
        assert_eq!(consume(&store, "net", &t, "n2", "k2", NOW).await.expect("store"), Ok(()));
        assert_eq!(consume(&store, "net", &t, "n3", "k3", NOW).await.expect("store"), Err(Refusal::UsedUp));
        let all = list(&store, "net").await.expect("list");
        assert_eq!(all.len(), 1);
        let (id, rec) = &all[0];
        assert_eq!(id, t.id());
        assert_eq!(rec.as_ref().expect("decodes").uses_left, Some(0));

        let unlimited = create(&store, "net", &CreateRequest { uses: None, ..req.clone() }, NOW).await.expect("create");
        for _ in 0..5 {
            assert_eq!(consume(&store, "net", &unlimited, "n1", "k1", NOW).await.expect("store"), Ok(()));
        }
        assert!(delete(&store, "net", unlimited.id()).await.expect("delete"));
        assert_eq!(consume(&store, "net", &unlimited, "n1", "k1", NOW).await.expect("store"), Err(Refusal::Unknown));
        assert!(!delete(&store, "net", unlimited.id()).await.expect("delete"));
    }

    #[tokio::test]
    async fn a_node_asking_again_with_the_same_key_spends_no_second_use() {
        let store = MemStore::new();
        let req = CreateRequest { ttl_secs: 3600, uses: Some(1), node: Some("n1".into()) };
        let t = create(&store, "net", &req, NOW).await.expect("create");
        assert_eq!(consume(&store, "net", &t, "n1", "k1", NOW).await.expect("store"), Ok(()));
        // The answer was lost; the agent asks again with the same key.
        assert_eq!(consume(&store, "net", &t, "n1", "k1", NOW).await.expect("store"), Ok(()));
        assert_eq!(consume(&store, "net", &t, "n1", "k2", NOW).await.expect("store"), Err(Refusal::UsedUp));
        assert_eq!(consume(&store, "net", &t, "n1", "k1", NOW + 3600).await.expect("store"), Err(Refusal::Expired));
        // The check before the CSR is read lets the spender through, nobody else.
        assert_eq!(lookup(&store, "net", &t, "n1", NOW).await.expect("store"), Ok(()));
        assert_eq!(lookup(&store, "net", &t, "n2", NOW).await.expect("store"), Err(Refusal::UsedUp));
        let all = list(&store, "net").await.expect("list");
        let rec = all[0].1.as_ref().expect("decodes");
        assert_eq!((rec.uses_left, rec.spent_by.len()), (Some(0), 1));
        // Only the latest uses are remembered.
        let many =
            create(&store, "net", &CreateRequest { uses: Some(40), node: None, ..req }, NOW).await.expect("create");
        for i in 0..20 {
            assert_eq!(consume(&store, "net", &many, &format!("n{i}"), "k", NOW).await.expect("store"), Ok(()));
        }
        let all = list(&store, "net").await.expect("list");
        let rec = all.iter().find(|(id, _)| id == many.id()).and_then(|(_, r)| r.as_ref().ok()).expect("record");
        assert_eq!((rec.uses_left, rec.spent_by.len()), (Some(20), MAX_SPENT_BY));
        assert_eq!(rec.spent_by.last().map(|s| s.node.as_str()), Some("n19"));
    }

    #[tokio::test]
    async fn concurrent_uses_never_exceed_the_count() {
        let store = MemStore::new();
        let req = CreateRequest { ttl_secs: 3600, uses: Some(3), node: None };
        let t = create(&store, "net", &req, NOW).await.expect("create");
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move { consume(&store, "net", &t, &format!("n{i}"), &format!("k{i}"), NOW).await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.expect("task").expect("store") {
                Ok(()) => ok += 1,
                Err(r) => assert_eq!(r, Refusal::UsedUp),
            }
        }
        assert_eq!(ok, 3);
    }

    #[tokio::test]
    async fn prune_removes_long_expired_records_only() {
        let store = MemStore::new();
        let old = create(&store, "net", &CreateRequest { ttl_secs: 60, uses: None, node: None }, NOW - 2 * 86400)
            .await
            .expect("create");
        let fresh =
            create(&store, "net", &CreateRequest { ttl_secs: 60, uses: None, node: None }, NOW).await.expect("create");
        assert_eq!(prune(&store, "net", NOW).await.expect("prune"), vec![old.id().to_string()]);
        let ids: Vec<String> = list(&store, "net").await.expect("list").into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![fresh.id().to_string()]);
    }
}
