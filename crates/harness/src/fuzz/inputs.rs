//! Hostile requests: every field drawn from values that break naive servers (empty, huge,
//! control characters, unicode tricks, SQL metacharacters, extreme numbers, invalid durations
//! and enum values), mixed with ids that exist so the deeper paths run too; and, for some
//! requests, bytes that are not a valid message at all.

use order_saga_proto::{
    delivery::v1 as delivery, order::v1 as order, reservation::v1 as reservation,
    store::v1 as store,
};
use prost::Message;
use rand::{Rng, RngCore, rngs::StdRng, seq::IndexedRandom};

/// Ids that exist in the fuzzed cluster, so some requests get past validation and lookups.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Foods and zones (pools).
    pub pools: Vec<String>,
    /// Orders placed before fuzzing.
    pub orders: Vec<String>,
    /// Their idempotency keys.
    pub keys: Vec<String>,
}

const NASTY: &[&str] = &[
    "",
    " ",
    "pizza ",
    "\0",
    "a\0b",
    "line\nforged INFO line",
    "\r\n",
    "\u{1b}[2J\u{1b}[31mred",
    "\u{7f}",
    "\u{85}next-line",
    "\u{202e}gnp.exe",
    "\u{200b}",
    "e\u{301}\u{301}\u{301}",
    "ピザ🍕",
    "𝕡𝕚𝕫𝕫𝕒",
    "'; DROP TABLE units; --",
    "\" OR \"1\"=\"1",
    "%",
    "_",
    "\\",
    "../../etc/passwd",
    "ord-",
    "ord-00000000000000000000000000000000",
    "12.ord-1",
    "9223372036854775807.x",
    "-1.ord",
    ".",
    ":",
    "a:b:c",
];

/// A string field: a known id, a nasty value, a random id-like string, random unicode, or a
/// long one.
pub fn string(rng: &mut StdRng, known: &[String]) -> String {
    match rng.random_range(0..10) {
        0..=2 if !known.is_empty() => known.choose(rng).cloned().unwrap_or_default(),
        0..=3 => (*NASTY.choose(rng).unwrap_or(&"")).to_owned(),
        4..=5 => {
            let len = rng.random_range(1..=70);
            let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_.:";
            (0..len)
                .map(|_| char::from(*alphabet.choose(rng).unwrap_or(&b'x')))
                .collect()
        }
        6 => {
            let len = rng.random_range(1..=40);
            (0..len)
                .map(|_| char::from_u32(rng.random_range(0..0x3_0000)).unwrap_or('\u{fffd}'))
                .collect()
        }
        7 => "x".repeat(*[65, 201, 1_000, 100_000].choose(rng).unwrap_or(&65)),
        _ => format!(
            "{}{}",
            known.choose(rng).map(String::as_str).unwrap_or("pizza"),
            NASTY.choose(rng).unwrap_or(&"")
        ),
    }
}

/// A 64-bit count: edges of every range the servers check, and random ones.
pub fn int64(rng: &mut StdRng) -> i64 {
    // The largest accepted count is rare: each one inserts 10,000 units, and a long run that
    // picked it as often as the other edges would spend its time (and disk) restocking.
    if rng.random_ratio(1, 1000) {
        return 10_000;
    }
    *[
        0,
        1,
        -1,
        2,
        100,
        10_001,
        i64::MAX,
        i64::MIN,
        i64::from(i32::MAX),
        rng.random_range(-1_000_000..1_000_000),
        rng.random_range(1..50),
    ]
    .choose(rng)
    .unwrap_or(&0)
}

/// A 32-bit size or limit.
pub fn int32(rng: &mut StdRng) -> i32 {
    *[
        0,
        1,
        -1,
        100,
        1_000,
        1_001,
        i32::MAX,
        i32::MIN,
        rng.random_range(-5_000..5_000),
    ]
    .choose(rng)
    .unwrap_or(&0)
}

/// A reservation TTL: missing, zero, negative, out of range, invalid nanos, or sensible.
pub fn ttl(rng: &mut StdRng) -> Option<prost_types::Duration> {
    let (seconds, nanos) = *[
        (0, 0),
        (-5, 0),
        (0, -1),
        (1, 999_999_999),
        (1, 2_000_000_000),
        (i64::MAX, 0),
        (i64::MIN, 0),
        (3_600, 0),
        (3_601, 0),
        (30, 0),
        (
            rng.random_range(-100..10_000),
            rng.random_range(-2_000_000_000..2_000_000_000),
        ),
    ]
    .choose(rng)
    .unwrap_or(&(30, 0));
    (rng.random_range(0..8) != 0).then_some(prost_types::Duration { seconds, nanos })
}

/// The encoded request of `rpc` (`Service/Method`), with hostile field values.
pub fn request(rpc: &str, rng: &mut StdRng, k: &Known) -> Vec<u8> {
    let pools = &k.pools;
    let orders = &k.orders;
    let s = |rng: &mut StdRng, known: &[String]| string(rng, known);
    match rpc.rsplit('/').next().unwrap_or_default() {
        "PlaceOrder" => order::PlaceOrderRequest {
            idempotency_key: s(rng, &k.keys),
            customer_id: s(rng, &[]),
            food_id: s(rng, pools),
            zone: s(rng, pools),
        }
        .encode_to_vec(),
        "GetOrder" => order::GetOrderRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        "ListOrders" => order::ListOrdersRequest {
            page_size: int32(rng),
            page_token: s(rng, &[]),
            state: int32(rng),
        }
        .encode_to_vec(),
        "ListStuckOrders" => order::ListStuckOrdersRequest { limit: int32(rng) }.encode_to_vec(),
        "RedriveOrder" => order::RedriveOrderRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        "ForceFailOrder" => order::ForceFailOrderRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        "GetSagaStats" => order::GetSagaStatsRequest {}.encode_to_vec(),
        "GetOrderHistory" => order::GetOrderHistoryRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        "GetFood" => store::GetFoodRequest {
            food_id: s(rng, pools),
        }
        .encode_to_vec(),
        "ListFoods" => store::ListFoodsRequest {
            page_size: int32(rng),
            page_token: s(rng, pools),
        }
        .encode_to_vec(),
        "CreateFood" => store::CreateFoodRequest {
            food_id: s(rng, pools),
            name: s(rng, &[]),
        }
        .encode_to_vec(),
        "Restock" => store::RestockRequest {
            food_id: s(rng, pools),
            count: int64(rng),
        }
        .encode_to_vec(),
        "GetZone" => delivery::GetZoneRequest {
            zone: s(rng, pools),
        }
        .encode_to_vec(),
        "ListZones" => delivery::ListZonesRequest {
            page_size: int32(rng),
            page_token: s(rng, pools),
        }
        .encode_to_vec(),
        "AddAgents" => delivery::AddAgentsRequest {
            zone: s(rng, pools),
            count: int64(rng),
        }
        .encode_to_vec(),
        // Known order ids too: the order service completes only a placed order's delivery,
        // and the invariant checker knows completed deliveries free their agents.
        "CompleteDelivery" => order::CompleteDeliveryRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        "Complete" => reservation::CompleteRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        "GetLimits" => reservation::GetLimitsRequest {}.encode_to_vec(),
        "Reserve" => reservation::ReserveRequest {
            order_id: s(rng, orders),
            pool: s(rng, pools),
            ttl: ttl(rng),
        }
        .encode_to_vec(),
        "Assign" => reservation::AssignRequest {
            order_id: s(rng, orders),
            unit_id: s(rng, &[]),
        }
        .encode_to_vec(),
        "Release" => reservation::ReleaseRequest {
            order_id: s(rng, orders),
        }
        .encode_to_vec(),
        _ => Vec::new(),
    }
}

/// Bytes that are mostly not a valid message of any type: random bytes, or a valid request
/// truncated, with a flipped byte, or with a field of a wrong wire type or an absurd length.
pub fn garbage(valid: &[u8], rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..5) {
        0 => {
            let mut bytes = vec![0; rng.random_range(0..512)];
            rng.fill_bytes(&mut bytes);
            bytes
        }
        1 if !valid.is_empty() => valid[..rng.random_range(0..valid.len())].to_vec(),
        2 if !valid.is_empty() => {
            let mut bytes = valid.to_vec();
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
            bytes
        }
        // Field 1 as a length-delimited string claiming 2^31 bytes.
        3 => vec![0x0a, 0x80, 0x80, 0x80, 0x80, 0x08, b'x'],
        // Field 1 with an invalid wire type (7), then a string that is not UTF-8.
        _ => vec![0x0f, 0x0a, 0x02, 0xff, 0xfe],
    }
}
