//! The gRPC contract of fanout: `package fanout.v1`.
//!
//! Generated code lives here and only here; the server and the client convert to their own
//! domain types at their edges.
//!
//! - [`v1`]: every message, the client and a plain server.
//! - [`encoded`]: the server fanout runs, whose responses are [`encoded::EncodedResponse`]s:
//!   bytes the server writes itself, so that a record is encoded once however many
//!   subscriptions receive it. Clients see ordinary `SubscribeResponse` messages.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

pub mod v1 {
    tonic::include_proto!("fanout.v1");
}

pub mod encoded {
    use std::fmt;

    use prost::bytes::{Buf, BufMut};
    use prost::encoding::{DecodeContext, WireType};

    /// Bytes of one `fanout.v1.SubscribeResponse` message, written by the server.
    pub trait Body: Send + Sync + fmt::Debug {
        /// Exactly how many bytes [`Body::write`] writes.
        fn size(&self) -> usize;
        /// Writes the message (without a length prefix).
        fn write(&self, buf: &mut dyn BufMut);
    }

    impl Body for crate::v1::SubscribeResponse {
        fn size(&self) -> usize {
            prost::Message::encoded_len(self)
        }

        fn write(&self, mut buf: &mut dyn BufMut) {
            prost::Message::encode_raw(self, &mut buf);
        }
    }

    /// A `SubscribeResponse` on its way out. Encode-only: decoding one yields an empty
    /// response (the server never decodes its own responses).
    #[derive(Debug, Default)]
    pub struct EncodedResponse(Option<Box<dyn Body>>);

    impl EncodedResponse {
        pub fn new(body: impl Body + 'static) -> Self {
            Self(Some(Box::new(body)))
        }
    }

    impl From<crate::v1::SubscribeResponse> for EncodedResponse {
        fn from(m: crate::v1::SubscribeResponse) -> Self {
            Self::new(m)
        }
    }

    impl prost::Message for EncodedResponse {
        fn encode_raw(&self, mut buf: &mut impl BufMut) {
            if let Some(body) = &self.0 {
                body.write(&mut buf);
            }
        }

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn encoded_len(&self) -> usize {
            self.0.as_ref().map_or(0, |b| b.size())
        }

        fn clear(&mut self) {
            self.0 = None;
        }
    }

    include!(concat!(env!("OUT_DIR"), "/encoded/fanout.v1.rs"));
}
