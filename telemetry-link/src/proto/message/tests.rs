//! Every message round-trips; versions, bounds and bad bytes are errors.

use super::*;
use crate::proto::refused::RefusedReason;
use proptest::prelude::*;

fn samples() -> Vec<Message<'static>> {
    vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            stream_id: 0xdead_beef_u128 << 64 | 7,
            last_seq: 42,
            max_frame: 1 << 20,
            replica: "replica-1".into(),
        }),
        Message::Welcome(Welcome {
            version: 1,
            applied_seq: 41,
            max_frame: 1 << 20,
            max_series: 1000,
        }),
        Message::Refuse(Refusal::new(ErrorCode::NotAllowed, "no")),
        Message::Batch(Batch {
            first_seq: 9,
            count: 2,
            body: b"\x00\x01a\x00\x01b",
        }),
        Message::Skip(Skip {
            from: 1,
            to: 5,
            lost: 3,
        }),
        Message::Ack(Ack { applied_seq: 5 }),
        Message::Bye,
        Message::Present(Present {
            id: 3,
            covers_seq: 99,
            part: 1,
            last: true,
            count: 1,
            body: b"\x02\x00\x01",
        }),
        Message::Refused(Refused {
            through_seq: 12,
            counts: RefusedCounts::of(RefusedReason::SeriesLimit, 3),
        }),
        Message::Hello(Hello {
            version: 2,
            stream_id: 1,
            last_seq: 0,
            max_frame: 1 << 20,
            replica: String::new(),
        }),
    ]
}

#[test]
fn every_message_roundtrips() {
    for m in samples() {
        let bytes = m.to_vec();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }
}

#[test]
fn unknown_version_is_named() {
    let mut bytes = Message::Hello(Hello {
        version: 99,
        stream_id: 1,
        last_seq: 0,
        max_frame: 10,
        replica: String::new(),
    })
    .to_vec();
    assert_eq!(
        Message::decode(&bytes),
        Err(MessageError::UnsupportedVersion(99))
    );
    // A future version may append fields the old one cannot parse: still
    // reported as a version problem, not as garbage.
    bytes.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        Message::decode(&bytes),
        Err(MessageError::UnsupportedVersion(99))
    );
}

#[test]
fn hello_layout_follows_its_version() {
    let v2 = Hello {
        version: 2,
        stream_id: 5,
        last_seq: 6,
        max_frame: 1024,
        replica: String::new(),
    };
    let v2_bytes = Message::Hello(v2.clone()).to_vec();
    let v3 = Hello {
        version: 3,
        replica: "r1".into(),
        ..v2.clone()
    };
    let v3_bytes = Message::Hello(v3.clone()).to_vec();
    // Version 3 appends the replica (length + bytes) and nothing else.
    assert_eq!(v3_bytes.len(), v2_bytes.len() + 3);
    assert_eq!(&v3_bytes[1..], {
        let mut b = v2_bytes[1..].to_vec();
        b[0] = 3;
        b.extend_from_slice(&[2, b'r', b'1']);
        b
    });
    assert_eq!(Message::decode(&v3_bytes), Ok(Message::Hello(v3)));
    // A version-2 hello carrying the version-3 field is malformed.
    let mut long = v2_bytes.clone();
    long.extend_from_slice(&[2, b'r', b'1']);
    assert_eq!(Message::decode(&long), Err(MessageError::Trailing(3)));
    // A name set on a version-2 hello is not encoded.
    let named_v2 = Hello {
        replica: "r1".into(),
        ..v2.clone()
    };
    assert_eq!(Message::Hello(named_v2).to_vec(), v2_bytes);
    // A version-3 hello without its replica is truncated.
    let mut short = v2_bytes;
    short[1] = 3;
    assert!(matches!(
        Message::decode(&short),
        Err(MessageError::Malformed { .. })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    assert_eq!(Message::decode(&[]), Err(MessageError::Empty));
    assert_eq!(Message::decode(&[200]), Err(MessageError::UnknownType(200)));
    assert!(matches!(
        Message::decode(&[MessageType::Ack as u8]),
        Err(MessageError::Malformed { .. })
    ));
    assert_eq!(
        Message::decode(&[MessageType::Ack as u8, 1, 0]),
        Err(MessageError::Trailing(1))
    );
    // A batch whose body length runs past the frame.
    assert!(Message::decode(&[MessageType::Batch as u8, 1, 1, 200, 1]).is_err());
}

#[test]
fn long_reasons_are_cut_on_a_char_boundary() {
    let r = Refusal::new(ErrorCode::Internal, "é".repeat(400));
    assert!(r.reason.len() <= MAX_REASON_LEN);
    assert!(Message::decode(&Message::Refuse(r).to_vec()).is_ok());
}

#[test]
fn error_codes_roundtrip() {
    for v in 0..20 {
        if let Some(c) = ErrorCode::from_u32(v) {
            assert_eq!(c.as_u32(), v);
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::decode(&data);
    }

    #[test]
    fn truncated_messages_are_errors(idx in 0usize..10, cut in 0usize..64) {
        let m = &samples()[idx];
        let bytes = m.to_vec();
        if cut < bytes.len() && !matches!(m, Message::Bye) {
            prop_assert!(Message::decode(&bytes[..cut]).is_err());
        }
    }
}
