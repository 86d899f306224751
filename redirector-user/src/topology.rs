//! Where things are: a locality (`region/zone/subzone`), the
//! `localityLbSetting.failover` pairs that name regions, and Istio's
//! well-known topology labels. Plain data, shared by the config (which
//! parses them) and the locality balancer (which ranks by them).

use std::fmt;

use serde::Serialize;

/// Istio's well-known topology labels (`failoverPriority` may name them).
pub(crate) const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub(crate) const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub(crate) const LABEL_SUBZONE: &str = "topology.istio.io/subzone";
pub(crate) const LABEL_NETWORK: &str = "topology.istio.io/network";

/// `region/zone/subzone`; missing parts are empty strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct Locality {
    pub(crate) region: String,
    pub(crate) zone: String,
    pub(crate) subzone: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LocalityError {
    #[error("locality {0:?} has more than three `/`-separated parts (region/zone/subzone)")]
    TooManyParts(String),
    #[error("locality {0:?} has an empty region before a zone or subzone")]
    EmptyRegion(String),
}

impl Locality {
    /// Parses `region[/zone[/subzone]]`. An empty string is the empty locality.
    pub(crate) fn parse(s: &str) -> Result<Self, LocalityError> {
        let mut parts = s.split('/');
        let region = parts.next().unwrap_or_default().to_owned();
        let zone = parts.next().unwrap_or_default().to_owned();
        let subzone = parts.next().unwrap_or_default().to_owned();
        if parts.next().is_some() {
            return Err(LocalityError::TooManyParts(s.to_owned()));
        }
        if region.is_empty() && !(zone.is_empty() && subzone.is_empty()) {
            return Err(LocalityError::EmptyRegion(s.to_owned()));
        }
        Ok(Self {
            region,
            zone,
            subzone,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

/// A `localityLbSetting.failover` entry: regions only, as Istio validates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Failover {
    pub(crate) from: String,
    pub(crate) to: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s).unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(loc("us-east1").to_string(), "us-east1");
        assert_eq!(loc("r/z").zone, "z");
        assert_eq!(loc("r/z/s").to_string(), "r/z/s");
        assert_eq!(loc("r//s").to_string(), "r//s");
        assert!(loc("").is_empty());
        assert_eq!(
            Locality::parse("a/b/c/d"),
            Err(LocalityError::TooManyParts("a/b/c/d".into()))
        );
        assert_eq!(
            Locality::parse("/z"),
            Err(LocalityError::EmptyRegion("/z".into()))
        );
    }
}
