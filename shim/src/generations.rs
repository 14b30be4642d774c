//! A bounded memory of what the proxy learned about each container (its trace, its identity),
//! keyed by namespace and container id.
//!
//! Entries are kept in two generations: new entries go to `current`; when half of [`REMEMBERED`]
//! have gone into `current` (retired ones included, see [`Generations::retire`]), it becomes
//! `previous` and the older generation is dropped. An entry looked up from `previous` moves back to
//! `current`, so the containers in use stay while ids seen once age out, at no cost per lookup
//! beyond a second map probe. Whatever the ids a peer sends, at most [`REMEMBERED`] entries are
//! kept; one forgotten is read again from its bundle when next needed.

use std::collections::HashMap;

/// Most containers a proxy remembers the trace and the identity of. A container forgotten early
/// (an id never created, or one past this bound) costs a read of its bundle at its next call, not
/// its trace or its identity.
pub(crate) const REMEMBERED: usize = 1024;

/// namespace → container id → entry; nested so that a lookup borrows its keys instead of
/// allocating them (the trace's lookup runs before every proxied request is forwarded).
type ByNamespace<V> = HashMap<String, HashMap<String, V>>;

/// The two generations (see the module documentation).
pub(crate) struct Generations<V> {
    current: ByNamespace<V>,
    /// Entries put into `current` since it was last turned, retired ones included: counting
    /// those too is what makes them go at a turn, which they would otherwise put off for ever
    /// (a pod's shim whose containers come and go, each retired at its shutdown).
    entered: usize,
    previous: ByNamespace<V>,
}

impl<V> Default for Generations<V> {
    fn default() -> Self {
        Generations {
            current: HashMap::new(),
            entered: 0,
            previous: HashMap::new(),
        }
    }
}

impl<V: Clone> Generations<V> {
    /// The entry of container `id` in namespace `ns`; one found in `previous` moves back to
    /// `current`.
    pub(crate) fn get(&mut self, ns: &str, id: &str) -> Option<V> {
        if let Some(value) = self.current.get(ns).and_then(|ids| ids.get(id)) {
            return Some(value.clone());
        }
        let (id, value) = take(&mut self.previous, ns, id)?;
        self.insert_new(ns, id, value.clone());
        Some(value)
    }

    /// Remembers `value` for container `id` in namespace `ns`, in `current`. Replacing an entry
    /// already in `current` does not grow it, so it does not turn the generations either; an older
    /// value in `previous` goes, so that a container is never remembered twice.
    pub(crate) fn insert(&mut self, ns: &str, id: &str, value: V) {
        if let Some(slot) = self.current.get_mut(ns).and_then(|ids| ids.get_mut(id)) {
            *slot = value;
            return;
        }
        let id = match take(&mut self.previous, ns, id) {
            Some((id, _older)) => id,
            None => id.to_string(),
        };
        self.insert_new(ns, id, value);
    }

    /// Puts an entry not in `current` there, turning the generations first if `current` is full.
    fn insert_new(&mut self, ns: &str, id: String, value: V) {
        if self.entered >= REMEMBERED / 2 {
            self.previous = std::mem::take(&mut self.current);
            self.entered = 0;
        }
        put(&mut self.current, ns, id, value);
        self.entered += 1;
    }

    /// Moves a container into the older generation, which the next turn drops; a lookup before
    /// then still finds it, and moves it back. It still counts toward that turn.
    pub(crate) fn retire(&mut self, ns: &str, id: &str) {
        if let Some((id, value)) = take(&mut self.current, ns, id) {
            put(&mut self.previous, ns, id, value);
        }
    }

    /// Entries remembered now, in both generations.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        [&self.current, &self.previous]
            .iter()
            .flat_map(|generation| generation.values())
            .map(HashMap::len)
            .sum()
    }
}

/// Removes container `id` of namespace `ns` from `generation`, with the namespace once it has no
/// container left.
fn take<V>(generation: &mut ByNamespace<V>, ns: &str, id: &str) -> Option<(String, V)> {
    let ids = generation.get_mut(ns)?;
    let entry = ids.remove_entry(id);
    if ids.is_empty() {
        generation.remove(ns);
    }
    entry
}

/// Puts container `id` of namespace `ns` into `generation`, allocating the namespace's key only
/// when it is new there.
fn put<V>(generation: &mut ByNamespace<V>, ns: &str, id: String, value: V) {
    match generation.get_mut(ns) {
        Some(ids) => {
            ids.insert(id, value);
        }
        None => {
            generation.insert(ns.to_string(), HashMap::from([(id, value)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` new containers `<prefix>-<i>` in namespace `ns`.
    fn fill(generations: &mut Generations<u32>, prefix: &str, count: usize) {
        for i in 0..count {
            generations.insert("ns", &format!("{prefix}-{i}"), 0);
        }
    }

    #[test]
    fn new_entries_go_to_current_and_a_full_current_becomes_previous() {
        let mut generations = Generations::default();
        generations.insert("ns", "first", 1);
        fill(&mut generations, "a", REMEMBERED / 2 - 1);
        assert_eq!(generations.entered, REMEMBERED / 2);
        assert_eq!(
            generations.previous.len(),
            0,
            "no turn before current is full"
        );
        // The next new entry turns the generations: all of `a` and `first` are now previous.
        generations.insert("ns", "turning", 2);
        assert_eq!(generations.entered, 1);
        assert_eq!(generations.previous["ns"].len(), REMEMBERED / 2);
        assert_eq!(generations.previous["ns"]["first"], 1);
        // A second turn drops that generation, `first` with it.
        fill(&mut generations, "b", REMEMBERED / 2);
        assert_eq!(generations.get("ns", "first"), None);
        assert_eq!(generations.len(), REMEMBERED / 2 + 1);
    }

    #[test]
    fn a_hit_in_previous_moves_back_to_current_and_survives_the_next_turn() {
        let mut generations = Generations::default();
        generations.insert("ns", "used", 7);
        fill(&mut generations, "a", REMEMBERED / 2);
        assert!(generations.previous["ns"].contains_key("used"));
        assert_eq!(generations.get("ns", "used"), Some(7));
        assert!(generations.current["ns"].contains_key("used"));
        assert!(!generations.previous["ns"].contains_key("used"));
        fill(&mut generations, "b", REMEMBERED / 2);
        assert_eq!(generations.get("ns", "used"), Some(7));
        assert_eq!(generations.get("ns", "a-0"), None);
    }

    #[test]
    fn replacing_an_entry_in_current_neither_grows_it_nor_turns() {
        let mut generations = Generations::default();
        generations.insert("ns", "old", 1);
        fill(&mut generations, "a", REMEMBERED / 2 - 1);
        generations.insert("ns", "a-0", 9);
        generations.insert("ns", "a-0", 10);
        assert_eq!(generations.entered, REMEMBERED / 2);
        assert!(generations.previous.is_empty());
        assert_eq!(generations.get("ns", "a-0"), Some(10));
        assert_eq!(generations.get("ns", "old"), Some(1));
    }

    #[test]
    fn a_new_value_for_an_entry_in_previous_replaces_it_there_too() {
        let mut generations = Generations::default();
        generations.insert("ns", "c1", 1);
        fill(&mut generations, "a", REMEMBERED / 2);
        assert_eq!(generations.previous["ns"]["c1"], 1);
        generations.insert("ns", "c1", 2);
        assert!(!generations.previous["ns"].contains_key("c1"));
        assert_eq!(generations.len(), REMEMBERED / 2 + 1);
        assert_eq!(generations.get("ns", "c1"), Some(2));
    }

    #[test]
    fn retire_moves_an_entry_to_previous_where_a_lookup_still_finds_it() {
        let mut generations = Generations::default();
        generations.insert("ns", "c1", 1);
        generations.insert("other", "c1", 2);
        generations.retire("ns", "c1");
        // Retiring an unknown container does nothing.
        generations.retire("ns", "never");
        assert_eq!(generations.entered, 2);
        assert!(
            !generations.current.contains_key("ns"),
            "empty namespace kept"
        );
        assert_eq!(generations.previous["ns"]["c1"], 1);
        assert_eq!(generations.len(), 2);
        // Namespaces are apart: the same id elsewhere is another container.
        assert_eq!(generations.get("other", "c1"), Some(2));
        // A late lookup finds the retired one and brings it back.
        assert_eq!(generations.get("ns", "c1"), Some(1));
        assert_eq!(generations.current["ns"]["c1"], 1);
        assert!(generations.previous.is_empty());
    }

    #[test]
    fn containers_retired_as_they_come_and_go_stay_bounded() {
        let mut generations = Generations::default();
        generations.insert("ns", "sandbox", 1);
        for i in 0..10 * REMEMBERED {
            let id = format!("c-{i}");
            generations.insert("ns", &id, 0);
            generations.retire("ns", &id);
            if i % 100 == 0 {
                // The sandbox, in use, stays.
                assert_eq!(generations.get("ns", "sandbox"), Some(1));
            }
            assert!(generations.len() <= REMEMBERED, "{}", generations.len());
        }
    }

    #[test]
    fn stays_bounded_whatever_the_ids() {
        let mut generations = Generations::default();
        for i in 0..10 * REMEMBERED {
            generations.insert(&format!("ns-{}", i % 7), &format!("c-{i}"), 0);
            assert!(generations.len() <= REMEMBERED);
        }
    }
}
