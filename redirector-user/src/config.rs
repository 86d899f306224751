//! TEMPORARY: type-only stand-in for the config module being written on the
//! `config` branch; replaced wholesale at merge.
#![allow(dead_code)]
use std::{net::{Ipv4Addr, SocketAddr}, path::{Path, PathBuf}, time::Duration};
use serde::Serialize;
use crate::locality::{Failover, Locality};

pub fn load_file(_path: &Path, _o: &NodeSettings) -> Result<Config, ConfigError> { unimplemented!() }
pub fn load_str(_s: &str, _t: &str, _o: &NodeSettings) -> Result<Config, ConfigError> { unimplemented!() }
#[derive(Clone, Debug, Serialize)] pub struct Config { pub node: NodeSettings, pub vip_range: ipnet::Ipv4Net, pub services: Vec<Service> }
#[derive(Clone, Debug, Default, Serialize, PartialEq)] pub struct NodeSettings {
    pub locality: Option<Locality>, pub cgroup: Option<PathBuf>, pub nameservers: Vec<SocketAddr>,
    pub listen_port: Option<u16>, pub vip_range: Option<ipnet::Ipv4Net>, pub pin_dir: Option<PathBuf>,
}
#[derive(Clone, Debug, Serialize)] pub struct Service {
    pub host: String, pub vip: Ipv4Addr, pub vip_allocated: bool, pub port: ServicePort,
    pub resolution: Resolution, pub endpoints: Vec<EndpointSpec>, pub policy: TrafficPolicy,
    pub service_entry: String, pub destination_rule: Option<String>,
}
#[derive(Clone, Debug, Serialize, PartialEq)] pub struct ServicePort { pub number: u16, pub name: String, pub protocol: Protocol, pub target_port: u16 }
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)] pub enum Protocol { Http, Https, Tcp, Tls }
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)] pub enum Resolution { Static, Dns }
#[derive(Clone, Debug, Serialize, PartialEq)] pub struct EndpointSpec { pub address: EndpointAddress, pub port: u16, pub locality: Locality }
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)] pub enum EndpointAddress { Ip(Ipv4Addr), Dns(String) }
impl std::fmt::Display for EndpointAddress { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { match self { Self::Ip(i) => write!(f, "{i}"), Self::Dns(d) => f.write_str(d) } } }
#[derive(Clone, Debug, Serialize, PartialEq)] pub struct TrafficPolicy { pub outlier: Option<OutlierPolicy>, pub locality_lb: LocalityLbPolicy, pub tls: TlsPolicy }
#[derive(Clone, Debug, Serialize, PartialEq)] pub struct OutlierPolicy { pub consecutive_5xx: u32, pub interval: Duration, pub base_ejection_time: Duration }
#[derive(Clone, Debug, Serialize, PartialEq)] pub struct LocalityLbPolicy { pub enabled: bool, pub failover: Vec<Failover> }
#[derive(Clone, Debug, Serialize, PartialEq)] pub enum TlsPolicy { Disable, Simple { sni: Option<String>, ca_certificates: Option<PathBuf> } }
#[derive(Debug, thiserror::Error)] #[error("config error")] pub struct ConfigError { pub problems: Vec<String> }
