//! Wire formats: the link, network and transport headers the sniffer decodes (`packet`),
//! and the classic pcap file format the synthetic captures are written in (`pcap`).

pub mod packet;
pub mod pcap;
