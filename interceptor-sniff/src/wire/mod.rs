//! Wire formats: the link, network and transport headers the sniffer decodes.

pub mod packet;
