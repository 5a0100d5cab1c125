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

    /// The server's codec: prost's, except that the encoder reserves a message's whole size
    /// in tonic's buffer before writing it. A batch response is far larger than tonic's
    /// 8 KiB buffer; written piece by piece, the buffer grew by doubling and copied what it
    /// held at every step (about 1.7 times each response's size, measured as the server's
    /// top `memmove` in `fanout-loadtest run`).
    #[derive(Debug)]
    pub struct Codec<T, U>(tonic_prost::ProstCodec<T, U>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Self(tonic_prost::ProstCodec::default())
        }
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ReservingEncoder<T>;
        type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

        fn encoder(&mut self) -> Self::Encoder {
            ReservingEncoder(std::marker::PhantomData)
        }

        fn decoder(&mut self) -> Self::Decoder {
            self.0.decoder()
        }
    }

    /// Encodes a message into room reserved for all of it at once.
    #[derive(Debug)]
    pub struct ReservingEncoder<T>(std::marker::PhantomData<T>);

    impl<T: prost::Message> tonic::codec::Encoder for ReservingEncoder<T> {
        type Item = T;
        type Error = tonic::Status;

        fn encode(
            &mut self,
            item: Self::Item,
            buf: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), Self::Error> {
            buf.reserve(item.encoded_len());
            item.encode(buf)
                .map_err(|e| tonic::Status::internal(format!("encoding a response: {e}")))
        }
    }

    include!(concat!(env!("OUT_DIR"), "/encoded/fanout.v1.rs"));
}
