//! Placeholder: the config module (Istio ServiceEntry/DestinationRule loading).
