//! The write algebra: folding a later write to a key into the earlier one so that applying the
//! result equals applying both in order (the table and the certainty rule are in the
//! [module docs](super)).

use std::collections::BTreeSet;

use crate::storage::item::{
    CONNECTED_MS, EVENT_MS, Item, Key, Order, Timed, Value, Write, names_node,
};

/// The result of folding a later write into an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// One write has the effect of both.
    One(Write),
    /// Together they have no effect: nothing needs to be written.
    Cancelled,
    /// They cannot be folded; both must be applied, in order.
    Two(Write, Write),
}

/// Folds `later` into `earlier` for the same key (see the module table).
pub fn merge(key: &Key, earlier: Write, later: Write) -> Merged {
    use Write::*;
    match (earlier, later) {
        (Put { fresh: f1, .. }, Put { item, fresh: f2 }) => Merged::One(Put {
            item,
            fresh: f1 && f2,
        }),
        (Put { fresh: true, .. }, Delete) => Merged::Cancelled,
        (_, Delete) => Merged::One(Delete),
        (_, Put { item, .. }) => Merged::One(Put { item, fresh: false }),
        (Put { item, fresh }, later) => put_then(key, item, fresh, later),
        (Delete, later) => delete_then(key, later),
        (Update { set: s1, guard: g1 }, Update { set: s2, guard: g2 }) => {
            updates((s1, g1), (s2, g2))
        }
        (
            SetDelta {
                attr: a1,
                add: add1,
                del: del1,
                fresh: f1,
            },
            SetDelta {
                attr: a2,
                add: add2,
                del: del2,
                fresh: f2,
            },
        ) if a1 == a2 => deltas(a1, (add1, del1, f1), (add2, del2, f2)),
        (Timed(t1), Timed(t2)) => timed(t1, t2),
        (earlier, later) => Merged::Two(earlier, later),
    }
}

/// put ∘ update (its guard evaluated against the put), put ∘ set delta and put ∘ timed write (its
/// condition evaluated against the put): the put, changed.
fn put_then(key: &Key, mut item: Item, fresh: bool, later: Write) -> Merged {
    match later {
        Write::Timed(timed) => {
            if let Some(after) = timed.apply(key, Some(&item)) {
                item = after;
            }
        }
        Write::Update { set, guard } => {
            let holds = guard
                .as_ref()
                .is_none_or(|(attr, value)| item.get(attr) == Some(value));
            if holds {
                item.extend(set);
            }
        }
        Write::SetDelta { attr, add, del, .. } => {
            let mut members = match item.remove(&attr) {
                Some(Value::Ss(set)) => set,
                _ => Default::default(),
            };
            members.extend(add);
            for m in &del {
                members.remove(m);
            }
            if !members.is_empty() {
                item.insert(attr, Value::Ss(members));
            }
        }
        // Puts and deletes are folded in `merge`.
        other => return Merged::Two(Write::Put { item, fresh }, other),
    }
    Merged::One(Write::Put { item, fresh })
}

/// delete ∘ update: delete when guarded (the guard fails on a missing item), else a put of key +
/// SETs; delete ∘ set delta: a put of key + the added members, delete when nothing is added.
fn delete_then(key: &Key, later: Write) -> Merged {
    let (mut item, extra) = match later {
        Write::Update { guard: Some(_), .. } => return Merged::One(Write::Delete),
        Write::Update { set, guard: None } => (key.to_item(), set),
        Write::SetDelta { add, .. } if add.is_empty() => return Merged::One(Write::Delete),
        Write::SetDelta { attr, add, .. } => (key.to_item(), [(attr, Value::Ss(add))].into()),
        // On a missing item a connect or a retained set holds; a disconnect does not.
        Write::Timed(timed) => {
            return match timed.apply(key, None) {
                Some(item) => Merged::One(Write::Put { item, fresh: false }),
                None => Merged::One(Write::Delete),
            };
        }
        // Puts and deletes are folded in `merge`.
        other => return Merged::Two(Write::Delete, other),
    };
    item.extend(extra);
    Merged::One(Write::Put { item, fresh: false })
}

/// A SET map and its guard.
type Guarded = (Item, Option<(String, Value)>);

/// update ∘ update: one update, later SETs winning, when both have the same guard and the first
/// does not SET the guard attribute; otherwise both, in order.
fn updates((mut s1, g1): Guarded, (s2, g2): Guarded) -> Merged {
    let guard_untouched = g1.as_ref().is_none_or(|(attr, _)| !s1.contains_key(attr));
    if g1 == g2 && guard_untouched {
        s1.extend(s2);
        Merged::One(Write::Update { set: s1, guard: g1 })
    } else {
        Merged::Two(
            Write::Update { set: s1, guard: g1 },
            Write::Update { set: s2, guard: g2 },
        )
    }
}

/// A set delta's ADD and DELETE members and whether it is certain (`fresh`).
type Delta = (BTreeSet<String>, BTreeSet<String>, bool);

/// set delta ∘ set delta on one attribute: an ADD withdraws a pending DELETE of that member; a
/// DELETE of a pending ADD withdraws the ADD, and when the earlier delta is not certain, also
/// stays as a DELETE.
fn deltas(attr: String, (mut add1, mut del1, f1): Delta, (add2, del2, f2): Delta) -> Merged {
    for m in add2 {
        del1.remove(&m);
        add1.insert(m);
    }
    // Members of a pending ADD are certain not to be stored only while the delta is certain;
    // otherwise the DELETE must go out too (the certainty rule).
    for m in del2 {
        if !(add1.remove(&m) && f1) {
            del1.insert(m);
        }
    }
    if add1.is_empty() && del1.is_empty() {
        Merged::Cancelled
    } else {
        Merged::One(Write::SetDelta {
            attr,
            add: add1,
            del: del1,
            fresh: f1 && f2,
        })
    }
}

/// timed ∘ timed: the write whose effect is both's, when one exists for every stored item
/// (argued per case in the [module docs](super)); otherwise both, in order. Each write stamps its
/// own time (its `set` holds `event_ms` = its time, and a connect its node and `connected_ms`),
/// and the one kept writes every attribute the other does.
fn timed(t1: Timed, t2: Timed) -> Merged {
    let covers = |kept: &Timed, other: &Timed| {
        other
            .set
            .keys()
            .chain(other.remove.iter())
            .all(|a| kept.set.contains_key(a) || kept.remove.contains(a))
    };
    if !(stamps_itself(&t1) && stamps_itself(&t2)) {
        return Merged::Two(Write::Timed(t1), Write::Timed(t2));
    }
    let later_wins = t2.at >= t1.at;
    if let (Order::Connect { node: n1 }, Order::Disconnect { node: n2 }) = (&t1.order, &t2.order)
        && n1 == n2
        && later_wins
        && t1.remove.is_empty()
        && t2.remove.is_empty()
    {
        return Merged::One(Write::Timed(connect_then_disconnect(t1, t2)));
    }
    let foldable = match (&t1.order, &t2.order) {
        (Order::Newest, Order::Newest) => true,
        // One node's connects, or one node's disconnects: the newer one.
        (Order::Connect { node: n1 }, Order::Connect { node: n2 })
        | (Order::Disconnect { node: n1 }, Order::Disconnect { node: n2 }) => n1 == n2,
        // A disconnect, then a newer connect (a reconnect): the connect.
        (Order::Disconnect { .. }, Order::Connect { .. }) => later_wins,
        // A connect, then a disconnect: when the connect is refused the disconnect may still
        // hold, so no one write is both.
        _ => false,
    };
    match (foldable, later_wins) {
        (true, true) if covers(&t2, &t1) => Merged::One(Write::Timed(t2)),
        (true, false) => Merged::One(Write::Timed(t1)),
        _ => Merged::Two(Write::Timed(t1), Write::Timed(t2)),
    }
}

/// A connect and a later disconnect from the same node as one write: both (the connect's
/// attributes, then the disconnect's) on the connect's condition — after the connect the
/// disconnect's own always holds (same node, `event_ms` = the connect's time, not later than its
/// own) — and, when DynamoDB refuses that condition, the disconnect alone on its own.
fn connect_then_disconnect(connect: Timed, disconnect: Timed) -> Timed {
    let mut set = connect.set;
    set.extend(disconnect.set.iter().map(|(k, v)| (k.clone(), v.clone())));
    Timed {
        at: connect.at,
        order: connect.order,
        set,
        remove: BTreeSet::new(),
        or_else: Some(Box::new(disconnect)),
    }
}

/// Whether `t`'s `set` records its own time (and a connect its node and connect time), which
/// the folds in [`timed`] rely on.
fn stamps_itself(t: &Timed) -> bool {
    let at = Value::N(i64::try_from(t.at).unwrap_or(i64::MAX));
    let own = t.set.get(EVENT_MS) == Some(&at) && t.or_else.is_none();
    match &t.order {
        Order::Newest | Order::Disconnect { .. } => own,
        Order::Connect { node } => {
            own && t.set.get(CONNECTED_MS) == Some(&at) && names_node(&t.set, node)
        }
    }
}
