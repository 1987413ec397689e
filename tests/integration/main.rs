//! capgate's integration tests: one binary, real sockets on 127.0.0.1, the Stripe stand-in.

mod clients;
mod common;
mod consumers;
mod corpus;
mod errors;
mod hardening;
mod jwt;
mod mcp;
mod plugins;
mod reload;
mod rest;
mod tidy;
mod traces;
