//! The wire side of Docker's remote network driver and remote IPAM driver protocols
//! (libnetwork's `remote` and `ipams/remote`): every call is an HTTP POST to `/<Method>` with a
//! JSON body, answered with JSON, an error as `{"Err":"message"}`. This module names the
//! methods, reads request bodies into types and answers the calls that need no node state.
//! Nothing here trusts the body: a missing field, a wrong type or bytes that are not JSON are a
//! [`Malformed`] answer, never a panic.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// `RequestAddressType` of a gateway request.
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";

/// The calls weft answers, by their URL path without the leading `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Activate,
    NetCapabilities,
    CreateNetwork,
    DeleteNetwork,
    CreateEndpoint,
    EndpointOperInfo,
    DeleteEndpoint,
    Join,
    Leave,
    DiscoverNew,
    DiscoverDelete,
    ProgramExternalConnectivity,
    RevokeExternalConnectivity,
    IpamCapabilities,
    DefaultAddressSpaces,
    RequestPool,
    ReleasePool,
    RequestAddress,
    ReleaseAddress,
}

impl Method {
    pub const ALL: [Method; 19] = [
        Method::Activate,
        Method::NetCapabilities,
        Method::CreateNetwork,
        Method::DeleteNetwork,
        Method::CreateEndpoint,
        Method::EndpointOperInfo,
        Method::DeleteEndpoint,
        Method::Join,
        Method::Leave,
        Method::DiscoverNew,
        Method::DiscoverDelete,
        Method::ProgramExternalConnectivity,
        Method::RevokeExternalConnectivity,
        Method::IpamCapabilities,
        Method::DefaultAddressSpaces,
        Method::RequestPool,
        Method::ReleasePool,
        Method::RequestAddress,
        Method::ReleaseAddress,
    ];

    /// The method's name as in the URL (and in the metrics' `method` label).
    pub fn name(self) -> &'static str {
        match self {
            Method::Activate => "Plugin.Activate",
            Method::NetCapabilities => "NetworkDriver.GetCapabilities",
            Method::CreateNetwork => "NetworkDriver.CreateNetwork",
            Method::DeleteNetwork => "NetworkDriver.DeleteNetwork",
            Method::CreateEndpoint => "NetworkDriver.CreateEndpoint",
            Method::EndpointOperInfo => "NetworkDriver.EndpointOperInfo",
            Method::DeleteEndpoint => "NetworkDriver.DeleteEndpoint",
            Method::Join => "NetworkDriver.Join",
            Method::Leave => "NetworkDriver.Leave",
            Method::DiscoverNew => "NetworkDriver.DiscoverNew",
            Method::DiscoverDelete => "NetworkDriver.DiscoverDelete",
            Method::ProgramExternalConnectivity => "NetworkDriver.ProgramExternalConnectivity",
            Method::RevokeExternalConnectivity => "NetworkDriver.RevokeExternalConnectivity",
            Method::IpamCapabilities => "IpamDriver.GetCapabilities",
            Method::DefaultAddressSpaces => "IpamDriver.GetDefaultAddressSpaces",
            Method::RequestPool => "IpamDriver.RequestPool",
            Method::ReleasePool => "IpamDriver.ReleasePool",
            Method::RequestAddress => "IpamDriver.RequestAddress",
            Method::ReleaseAddress => "IpamDriver.ReleaseAddress",
        }
    }

    /// The method of a URL path (`/NetworkDriver.Join`).
    pub fn from_path(path: &str) -> Option<Method> {
        let name = path.strip_prefix('/')?;
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// One pool of a network as Docker's IPAM gave it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpamData {
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "Gateway", default)]
    pub gateway: String,
}

/// `NetworkDriver.DeleteNetwork`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
}

/// The addresses Docker's IPAM chose for an endpoint (CIDR strings; empty when not given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EndpointInterface {
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress", default)]
    pub mac_address: String,
}

/// `DeleteEndpoint`, `Leave` and `EndpointOperInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RequestPool {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    #[serde(rename = "Pool", default)]
    pub pool: String,
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `IpamDriver.ReleasePool`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReleasePool {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A specific address asked for (with or without a prefix length), or empty.
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, Value>,
}

impl RequestAddress {
    /// Docker asks for the network's gateway.
    pub fn is_gateway(&self) -> bool {
        self.options.get("RequestAddressType").and_then(Value::as_str) == Some(GATEWAY_REQUEST)
    }
}

/// `IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

/// `null` where Docker's Go structs leave a nil slice or map reads as empty.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A call only the running node can answer (it changes or reads the node's state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    CreateNetwork(CreateNetwork),
    DeleteNetwork(NetworkRef),
    CreateEndpoint(CreateEndpoint),
    DeleteEndpoint(EndpointRef),
    Join(Join),
    Leave(EndpointRef),
    RequestPool(RequestPool),
    ReleasePool(ReleasePool),
    RequestAddress(RequestAddress),
    ReleaseAddress(ReleaseAddress),
}

impl Call {
    pub fn method(&self) -> Method {
        match self {
            Call::CreateNetwork(_) => Method::CreateNetwork,
            Call::DeleteNetwork(_) => Method::DeleteNetwork,
            Call::CreateEndpoint(_) => Method::CreateEndpoint,
            Call::DeleteEndpoint(_) => Method::DeleteEndpoint,
            Call::Join(_) => Method::Join,
            Call::Leave(_) => Method::Leave,
            Call::RequestPool(_) => Method::RequestPool,
            Call::ReleasePool(_) => Method::ReleasePool,
            Call::RequestAddress(_) => Method::RequestAddress,
            Call::ReleaseAddress(_) => Method::ReleaseAddress,
        }
    }
}

/// The body of a request that is not what its method takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {method} request: {why}")]
pub struct Malformed {
    pub method: &'static str,
    pub why: String,
}

/// What to do with a request: answer it here, or hand it to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Answer(Value),
    Node(Call),
}

/// Reads one request of `method`. Calls that need no node state are answered at once.
pub fn route(method: Method, body: &[u8]) -> Result<Route, Malformed> {
    fn parse<T: serde::de::DeserializeOwned>(method: Method, body: &[u8]) -> Result<T, Malformed> {
        serde_json::from_slice(body).map_err(|e| Malformed { method: method.name(), why: e.to_string() })
    }
    // Calls without a payload may come with an empty body; one that has a body must be JSON.
    let no_payload = |method: Method| -> Result<(), Malformed> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        parse::<Value>(method, body).map(drop)
    };
    let answer = |v: Value| Ok(Route::Answer(v));
    match method {
        Method::Activate => {
            no_payload(method)?;
            answer(json!({"Implements": ["NetworkDriver", "IpamDriver"]}))
        }
        Method::NetCapabilities => {
            no_payload(method)?;
            answer(json!({"Scope": "local", "ConnectivityScope": "local"}))
        }
        Method::IpamCapabilities => {
            no_payload(method)?;
            // Replay: after its own restart Docker asks again for the pools and addresses it
            // holds, which keeps the agent's reservations in step with Docker's store.
            answer(json!({"RequiresMACAddress": false, "RequiresRequestReplay": true}))
        }
        Method::DefaultAddressSpaces => {
            no_payload(method)?;
            answer(json!({"LocalDefaultAddressSpace": "weft-local", "GlobalDefaultAddressSpace": "weft-global"}))
        }
        Method::EndpointOperInfo => {
            parse::<EndpointRef>(method, body)?;
            answer(json!({"Value": {}}))
        }
        Method::DiscoverNew
        | Method::DiscoverDelete
        | Method::ProgramExternalConnectivity
        | Method::RevokeExternalConnectivity => {
            let v: Value = parse(method, body)?;
            if !v.is_object() {
                return Err(Malformed { method: method.name(), why: "expected a JSON object".into() });
            }
            answer(json!({}))
        }
        Method::CreateNetwork => parse(method, body).map(|r| Route::Node(Call::CreateNetwork(r))),
        Method::DeleteNetwork => parse(method, body).map(|r| Route::Node(Call::DeleteNetwork(r))),
        Method::CreateEndpoint => parse(method, body).map(|r| Route::Node(Call::CreateEndpoint(r))),
        Method::DeleteEndpoint => parse(method, body).map(|r| Route::Node(Call::DeleteEndpoint(r))),
        Method::Join => parse(method, body).map(|r| Route::Node(Call::Join(r))),
        Method::Leave => parse(method, body).map(|r| Route::Node(Call::Leave(r))),
        Method::RequestPool => parse(method, body).map(|r| Route::Node(Call::RequestPool(r))),
        Method::ReleasePool => parse(method, body).map(|r| Route::Node(Call::ReleasePool(r))),
        Method::RequestAddress => parse(method, body).map(|r| Route::Node(Call::RequestAddress(r))),
        Method::ReleaseAddress => parse(method, body).map(|r| Route::Node(Call::ReleaseAddress(r))),
    }
}

/// An error answer.
pub fn error_body(message: &str) -> Value {
    json!({ "Err": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_its_path() {
        for m in Method::ALL {
            assert_eq!(Method::from_path(&format!("/{}", m.name())), Some(m));
        }
        assert_eq!(Method::from_path("/NetworkDriver.AllocateNetwork"), None);
        assert_eq!(Method::from_path("NetworkDriver.Join"), None);
    }

    #[test]
    fn handshake_and_capabilities_are_answered_here() {
        let Ok(Route::Answer(a)) = route(Method::Activate, b"") else { panic!("activate") };
        assert_eq!(a, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
        let Ok(Route::Answer(c)) = route(Method::NetCapabilities, b"null") else { panic!("caps") };
        assert_eq!(c["Scope"], "local");
        assert_eq!(c["ConnectivityScope"], "local");
        let Ok(Route::Answer(i)) = route(Method::EndpointOperInfo, br#"{"NetworkID":"n","EndpointID":"e"}"#) else {
            panic!("oper info")
        };
        assert_eq!(i, json!({"Value": {}}));
    }

    #[test]
    fn requests_are_read_into_types() {
        let body =
            br#"{"PoolID":"10.244.1.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#;
        let Ok(Route::Node(Call::RequestAddress(r))) = route(Method::RequestAddress, body) else { panic!("parse") };
        assert!(r.is_gateway());
        let body = br#"{"PoolID":"10.244.1.0/24","Address":"10.244.1.7","Options":null}"#;
        let Ok(Route::Node(Call::RequestAddress(r))) = route(Method::RequestAddress, body) else { panic!("parse") };
        assert!(!r.is_gateway() && r.address == "10.244.1.7");
        let body = br#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.244.1.2/24","AddressIPv6":"","MacAddress":""},"Options":{"x":{"y":1}}}"#;
        let Ok(Route::Node(Call::CreateEndpoint(c))) = route(Method::CreateEndpoint, body) else { panic!("parse") };
        assert_eq!(c.interface.expect("interface").address, "10.244.1.2/24");
        let body = br#"{"NetworkID":"n","IPv4Data":[{"AddressSpace":"weft-local","Pool":"10.244.1.0/24","Gateway":"10.244.1.1/24","AuxAddresses":null}],"IPv6Data":null,"Options":{}}"#;
        let Ok(Route::Node(Call::CreateNetwork(c))) = route(Method::CreateNetwork, body) else { panic!("parse") };
        assert_eq!((c.ipv4_data.len(), c.ipv6_data.len()), (1, 0));
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let cases: &[(Method, &[u8])] = &[
            (Method::Join, b"{not json"),
            (Method::Join, br#"{"NetworkID":"n"}"#),
            (Method::Join, br#"{"NetworkID":1,"EndpointID":"e"}"#),
            (Method::RequestAddress, b"[]"),
            (Method::CreateEndpoint, b""),
            (Method::Activate, b"\xff\xfe"),
            (Method::DiscoverNew, b"3"),
            (Method::ReleaseAddress, br#"{"PoolID":"p"}"#),
        ];
        for (m, body) in cases {
            let e = route(*m, body).expect_err("malformed");
            assert_eq!(e.method, m.name());
            assert!(e.to_string().starts_with(&format!("malformed {} request: ", m.name())), "{e}");
        }
    }
}
