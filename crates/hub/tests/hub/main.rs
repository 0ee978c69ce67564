//! The Hub client against servers on loopback: the zoo served like the Hub, and handlers that misbehave on
//! purpose. One test binary, so the heavy link happens once.

mod cache;
mod client;
mod hubsim;
mod remote;
mod support;
