//! Outbound webhooks: deliveries of the event log's events to the endpoints organizations
//! register, signed the Standard Webhooks way so receivers verify them with off-the-shelf
//! libraries. Every call goes out through [`crate::egress`].

pub mod signing;
