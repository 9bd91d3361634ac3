//! The console's HTML (maud): a layout and one function per page. Everything user-supplied is
//! escaped by maud; times are UTC.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use order_saga_platform::auth::{LOGIN_PATH, Role};
use order_saga_proto::{delivery::v1::Zone, store::v1::Food};

use crate::{
    history::HistoryEvent,
    repo::{OrderRecord, OrderState},
};

/// Reasons an order is not placed, for the filter (`order_saga_saga::Reason::as_str`).
const REASONS: [&str; 9] = [
    "out_of_stock",
    "no_agent",
    "unknown_food",
    "unknown_zone",
    "reservation_expired",
    "store_unavailable",
    "delivery_unavailable",
    "force_failed",
    "refused",
];

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

fn state_badge(state: OrderState) -> Markup {
    let (class, text) = match state {
        OrderState::Pending => ("badge pending", "PENDING"),
        OrderState::Placed => ("badge placed", "PLACED"),
        OrderState::NotPlaced => ("badge not-placed", "NOT_PLACED"),
    };
    html! { span class=(class) { (text) } }
}

fn layout(title: &str, role: Option<Role>, live: bool, body: Markup) -> Markup {
    let nav = [
        ("/console/orders", "Orders"),
        ("/console/unfinished", "Unfinished sagas"),
        ("/console/stock", "Stock & agents"),
        ("/console/activity", "Activity"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · order-saga console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header {
                    span.brand { "order-saga" }
                    nav {
                        @for (href, label) in nav {
                            a href=(href) { (label) }
                        }
                    }
                    span.who {
                        @match role {
                            Some(Role::Operator) => "operator",
                            Some(Role::Viewer) => "viewer (read only)",
                            None => "",
                        }
                        form method="post" action=(LOGIN_PATH) {
                            input type="hidden" name="logout" value="1";
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if live {
                        label.live { input #live-toggle type="checkbox" checked; " live (every 5 s)" }
                    }
                    div #live { (body) }
                }
            }
        }
    }
}

/// The login form.
pub fn login(failed: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · order-saga console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body.login {
                form method="post" action=(LOGIN_PATH) {
                    h1 { "order-saga console" }
                    p { "The console takes the admin API's bearer tokens: an operator's token may act, a viewer's may look." }
                    @if failed { p.error { "That token is not accepted here." } }
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" autofocus;
                    button #login type="submit" { "Log in" }
                }
            }
        }
    }
}

/// An error page.
pub fn error(status: StatusCode, message: &str) -> Markup {
    layout(
        &format!("{}", status),
        None,
        false,
        html! { p.error { (message) } p { a href="/console/orders" { "Back to the orders" } } },
    )
}

fn selected(q: &[(String, String)], key: &str, value: &str) -> bool {
    q.iter().any(|(k, v)| k == key && v == value)
}

fn field(q: &[(String, String)], key: &str) -> String {
    super::value(q, key).unwrap_or_default()
}

/// The orders list.
pub fn orders(
    role: Option<Role>,
    q: &[(String, String)],
    rows: &[OrderRecord],
    next: Option<&str>,
) -> Markup {
    let next_href = next.map(|token| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in q.iter().filter(|(k, _)| k != "after") {
            s.append_pair(k, v);
        }
        s.append_pair("after", token);
        format!("/console/orders?{}", s.finish())
    });
    let body = html! {
        form.filters method="get" action="/console/orders" {
            input #search type="search" name="q" placeholder="order id or idempotency key" value=(field(q, "q"));
            select name="state" {
                option value="" { "any state" }
                @for s in ["pending", "placed", "not_placed"] {
                    option value=(s) selected[selected(q, "state", s)] { (s) }
                }
            }
            select name="reason" {
                option value="" { "any reason" }
                @for r in REASONS {
                    option value=(r) selected[selected(q, "reason", r)] { (r) }
                }
            }
            input name="food" placeholder="food" value=(field(q, "food")) size="10";
            input name="zone" placeholder="zone" value=(field(q, "zone")) size="10";
            select name="since" {
                option value="" { "any time" }
                @for s in ["15m", "1h", "24h", "7d"] {
                    option value=(s) selected[selected(q, "since", s)] { "last " (s) }
                }
            }
            button #filter type="submit" { "Filter" }
            a href="/console/orders" { "clear" }
        }
        table.orders {
            thead { tr { th { "order" } th { "state" } th { "reason" } th { "food" } th { "zone" } th { "packet" } th { "agent" } th { "created (UTC)" } } }
            tbody {
                @for r in rows {
                    tr {
                        td { a.order-link href={ "/console/orders/" (r.order_id) } { (r.order_id) } }
                        td { (state_badge(r.state())) }
                        td { (r.saga.reason.map(|x| x.as_str()).unwrap_or("")) }
                        td { (r.request.food_id) }
                        td { (r.request.zone) }
                        td.mono { (r.saga.store.unit.as_deref().unwrap_or("")) }
                        td.mono { (r.saga.delivery.unit.as_deref().unwrap_or("")) }
                        td { (time(r.created_at)) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="8" { "No order matches." } } }
            }
        }
        @if let Some(href) = next_href { p { a #next href=(href) { "Next page →" } } }
    };
    layout("Orders", role, true, body)
}

/// One order with its timeline.
pub fn order(
    role: Option<Role>,
    r: &OrderRecord,
    history: &[HistoryEvent],
    notice: Option<&str>,
) -> Markup {
    let pending = r.state() == OrderState::Pending;
    let operator = role == Some(Role::Operator);
    // Each event with the milliseconds since the previous one.
    let timeline: Vec<(&HistoryEvent, i64)> = history
        .iter()
        .scan(
            history.first().map_or(r.created_at, |e| e.at),
            |previous, e| {
                let since = e.at - *previous;
                *previous = e.at;
                Some((e, since))
            },
        )
        .collect();
    let body = html! {
        @if let Some(n) = notice { p.notice #notice { (n) } }
        div.cards {
            section.card {
                h2 { "Order" }
                dl {
                    dt { "id" } dd.mono #order-id { (r.order_id) }
                    dt { "state" } dd #order-state { (state_badge(r.state())) }
                    @if let Some(reason) = r.saga.reason { dt { "reason" } dd { (reason.as_str()) } }
                    @if let Some(detail) = &r.detail { dt { "detail" } dd { (detail) } }
                    dt { "customer" } dd { (r.request.customer_id) }
                    dt { "idempotency key" } dd.mono { (r.request.idempotency_key) }
                    dt { "food / zone" } dd { (r.request.food_id) " / " (r.request.zone) }
                    dt { "created" } dd { (time(r.created_at)) }
                    dt { "updated" } dd { (time(r.updated_at)) }
                }
            }
            section.card {
                h2 { "Holds" }
                dl {
                    dt { "packet" } dd.mono { (r.saga.store.unit.as_deref().unwrap_or("none")) " (" (r.saga.store.state.as_str()) ")" }
                    dt { "agent" } dd.mono { (r.saga.delivery.unit.as_deref().unwrap_or("none")) " (" (r.saga.delivery.state.as_str()) ")" }
                }
                h2 { "Saga" }
                dl {
                    dt { "phase" } dd { (r.saga.phase.as_str()) }
                    dt { "epoch" } dd { (r.epoch) }
                    dt { (if pending { "driver" } else { "last driver" }) } dd { (r.lease_owner.as_deref().unwrap_or("none")) }
                    @if let Some(until) = r.lease_expires_at { dt { "lease until" } dd { (time(until)) } }
                    dt { "transient failures" } dd { (r.attempts) }
                    @if let Some(e) = &r.last_error { dt { "last error" } dd { (e) } }
                }
                @if pending && operator {
                    div.actions {
                        form method="post" action={ "/console/orders/" (r.order_id) "/redrive" } {
                            button #redrive type="submit" { "Redrive" }
                        }
                        form method="post" action={ "/console/orders/" (r.order_id) "/force-fail" }
                            onsubmit="return confirm('Fail this order? It becomes NOT_PLACED and both sides are released.')" {
                            button.danger #force-fail type="submit" { "Force-fail" }
                        }
                    }
                }
                @if r.saga.phase == order_saga_saga::Phase::Placed && operator {
                    div.actions {
                        form method="post" action={ "/console/orders/" (r.order_id) "/complete-delivery" }
                            onsubmit="return confirm('Mark the delivery done? Its agent is freed for the next order.')" {
                            button #complete-delivery type="submit" { "Complete delivery" }
                        }
                    }
                }
            }
        }
        h2 { "Timeline" }
        table.timeline #timeline {
            thead { tr { th { "#" } th { "time (UTC)" } th { "+ms" } th { "epoch" } th { "instance" } th { "what" } th { "phase" } th { "calls" } th { "error" } } }
            tbody {
                @for (e, since) in &timeline {
                    tr class=(if e.kind == "step" { "step" } else { "claim" }) {
                        td { (e.seq) }
                        td { (time(e.at)) }
                        td.num { (since) }
                        td.num { (e.epoch) }
                        td.mono { (e.instance) }
                        td { (e.kind) }
                        td {
                            @match &e.phase_from {
                                Some(from) if *from != e.phase_to => { (from) " → " (e.phase_to) }
                                _ => { (e.phase_to) }
                            }
                        }
                        td {
                            @for c in &e.calls {
                                div class=(if c.code == "Ok" { "call ok" } else { "call failed" }) {
                                    (c.side) " " (c.call) " " b { (c.code) } " " (c.ms) " ms"
                                    @if let Some(unit) = &c.unit { " → " span.mono { (unit) } }
                                }
                            }
                        }
                        td.error { (e.error.as_deref().unwrap_or("")) }
                    }
                }
                @if history.is_empty() { tr { td colspan="9" { "No history (older than the retention)." } } }
            }
        }
    };
    layout(&format!("Order {}", r.order_id), role, true, body)
}

/// Unfinished sagas with bulk actions.
pub fn unfinished(role: Option<Role>, stuck: &[OrderRecord], notices: &[String]) -> Markup {
    let operator = role == Some(Role::Operator);
    let body = html! {
        @for n in notices { p.notice { (n) } }
        form #bulk method="post" action="/console/unfinished" {
            @if operator {
                div.actions {
                    button #bulk-redrive type="submit" name="action" value="redrive" { "Redrive selected" }
                    button.danger #bulk-force-fail type="submit" name="action" value="force-fail"
                        onclick="return confirm('Fail every selected order?')" { "Force-fail selected" }
                }
            }
            table {
                thead { tr { th { input #select-all type="checkbox" title="select all"; } th { "order" } th { "phase" } th { "epoch" } th { "driver" } th { "lease until" } th { "failures" } th { "last error" } th { "created (UTC)" } } }
                tbody {
                    @for r in stuck {
                        tr {
                            td { input.pick type="checkbox" name="order_id" value=(r.order_id); }
                            td { a href={ "/console/orders/" (r.order_id) } { (r.order_id) } }
                            td { (r.saga.phase.as_str()) }
                            td.num { (r.epoch) }
                            td.mono { (r.lease_owner.as_deref().unwrap_or("")) }
                            td { (r.lease_expires_at.map(time).unwrap_or_default()) }
                            td.num { (r.attempts) }
                            td.error { (r.last_error.as_deref().unwrap_or("")) }
                            td { (time(r.created_at)) }
                        }
                    }
                    @if stuck.is_empty() { tr { td colspan="9" { "Every saga has finished." } } }
                }
            }
        }
    };
    layout("Unfinished sagas", role, true, body)
}

fn bar(n: i64, max: i64) -> Markup {
    let width = if max > 0 { n * 100 / max } else { 0 };
    html! { div.bar { div style={ "width:" (width) "%" } {} span { (n) } } }
}

/// Stock per food and agents per zone.
pub fn stock(role: Option<Role>, foods: &[Food], zones: &[Zone]) -> Markup {
    let body = html! {
        div.cards {
            section.card {
                h2 { "Packets per food" }
                table #foods {
                    thead { tr { th { "food" } th { "name" } th { "available" } th { "reserved" } th { "assigned" } } }
                    tbody {
                        @for f in foods {
                            tr { td { (f.food_id) } td { (f.name) } td.num { (f.available) } td.num { (f.reserved) } td.num { (f.assigned) } }
                        }
                    }
                }
            }
            section.card {
                h2 { "Agents per zone" }
                table #zones {
                    thead { tr { th { "zone" } th { "available" } th { "reserved" } th { "assigned" } } }
                    tbody {
                        @for z in zones {
                            tr { td { (z.zone) } td.num { (z.available) } td.num { (z.reserved) } td.num { (z.assigned) } }
                        }
                    }
                }
            }
        }
    };
    layout("Stock & agents", role, true, body)
}

/// Throughput and outcomes per minute.
pub fn activity(
    role: Option<Role>,
    since: i64,
    rows: &[(i64, String, Option<String>, i64)],
    unfinished: usize,
) -> Markup {
    let minutes: Vec<i64> = (0..15).map(|i| since + i * 60_000).collect();
    let count = |minute: i64, placed: bool| -> i64 {
        rows.iter()
            .filter(|(m, state, _, _)| *m == minute && (state == "placed") == placed)
            .map(|(_, _, _, n)| n)
            .sum()
    };
    let max = minutes
        .iter()
        .map(|&m| count(m, true) + count(m, false))
        .max()
        .unwrap_or(0);
    let mut reasons: Vec<(String, i64)> = Vec::new();
    for (_, state, reason, n) in rows {
        let key = if state == "placed" {
            "placed".to_owned()
        } else {
            format!("not placed: {}", reason.as_deref().unwrap_or("unknown"))
        };
        match reasons.iter_mut().find(|(k, _)| *k == key) {
            Some((_, total)) => *total += n,
            None => reasons.push((key, *n)),
        }
    }
    reasons.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let total: i64 = reasons.iter().map(|(_, n)| n).sum();
    let body = html! {
        p { "Orders finished in the last 15 minutes: " b #finished-total { (total) } " (" (format!("{:.2}", total as f64 / 900.0)) " per second on average). Unfinished sagas now: " b { (unfinished) } "." }
        div.cards {
            section.card {
                h2 { "Per minute (UTC)" }
                table #per-minute {
                    thead { tr { th { "minute" } th { "placed" } th { "not placed" } } }
                    tbody {
                        @for m in &minutes {
                            tr {
                                td { (time(*m).get(11..16).unwrap_or_default()) }
                                td { (bar(count(*m, true), max)) }
                                td.bad { (bar(count(*m, false), max)) }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "Outcomes" }
                table #outcomes {
                    tbody {
                        @for (k, n) in &reasons { tr { td { (k) } td.num { (n) } } }
                        @if reasons.is_empty() { tr { td { "No order finished in this window." } } }
                    }
                }
            }
        }
    };
    layout("Activity", role, true, PreEscaped(body.into_string()))
}
