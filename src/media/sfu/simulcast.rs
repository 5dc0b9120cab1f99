//! Simulcast: which of a track's layers a receiver gets, from the quality it asked for, the
//! bandwidth its estimates allow, and the layer it has now (held with a margin each way). Pure:
//! the relay switches layers at keyframes with what this decides.

/// The video quality a receiver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quality {
    Low,
    Medium,
    High,
}

impl Quality {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Quality::Low),
            "medium" => Some(Quality::Medium),
            "high" => Some(Quality::High),
            _ => None,
        }
    }
}

/// The layer a receiver that wants `quality` (and can take `cap_bps`) gets, for a track whose
/// layers measure `bps` (by arrival order): the layers ranked by bit rate, low (the lowest),
/// medium (the next), high (the highest), and never above the cap unless nothing fits. For a
/// receiver getting `current` now, with a margin each way so an estimate near a layer's bit
/// rate does not flip between two layers: it keeps its layer while the estimate covers 85% of
/// it, and moves up only to a layer the estimate exceeds by 15%.
pub fn choose(bps: &[u64], quality: Quality, cap_bps: Option<u64>, current: Option<u8>) -> u8 {
    if bps.len() <= 1 {
        return 0;
    }
    let mut ranked: Vec<usize> = (0..bps.len()).collect();
    ranked.sort_by_key(|i| bps[*i]);
    let most = match quality {
        Quality::Low => 0,
        Quality::Medium => 1.min(ranked.len() - 1),
        Quality::High => ranked.len() - 1,
    };
    let kept = current.and_then(|c| ranked.iter().position(|i| *i == usize::from(c))).filter(|r| *r <= most);
    if let (Some(cap), Some(mut rank)) = (cap_bps, kept)
        && bps[ranked[rank]] * 85 / 100 <= cap
    {
        while rank < most && bps[ranked[rank + 1]] * 115 / 100 <= cap {
            rank += 1;
        }
        return ranked[rank] as u8;
    }
    let mut rank = most;
    if let Some(cap) = cap_bps {
        while rank > 0 && bps[ranked[rank]] > cap {
            rank -= 1;
        }
    }
    ranked[rank] as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: [u64; 3] = [300_000, 100_000, 900_000];

    #[test]
    fn layers_are_picked_by_bit_rate_within_the_cap() {
        assert_eq!(choose(&[], Quality::High, None, None), 0);
        assert_eq!(choose(&LAYERS, Quality::Low, None, None), 1);
        assert_eq!(choose(&LAYERS, Quality::Medium, None, None), 0);
        assert_eq!(choose(&LAYERS, Quality::High, None, None), 2);
        assert_eq!(choose(&LAYERS, Quality::High, Some(500_000), None), 0);
        assert_eq!(choose(&LAYERS, Quality::High, Some(50_000), None), 1, "nothing fits: the lowest");
    }

    #[test]
    fn the_current_layer_is_held_with_a_margin_each_way() {
        // Receiving the top layer, an estimate a little under it keeps it; well under, not.
        assert_eq!(choose(&LAYERS, Quality::High, Some(800_000), Some(2)), 2);
        assert_eq!(choose(&LAYERS, Quality::High, Some(700_000), Some(2)), 0);
        // Receiving the middle one, an estimate just over the top layer is not enough to move.
        assert_eq!(choose(&LAYERS, Quality::High, Some(950_000), Some(0)), 0);
        assert_eq!(choose(&LAYERS, Quality::High, Some(1_100_000), Some(0)), 2);
        // A request below the current layer is followed at once.
        assert_eq!(choose(&LAYERS, Quality::Low, Some(1_100_000), Some(2)), 1);
    }

    #[test]
    fn a_single_layer_track_always_plays_its_one_layer() {
        for quality in [Quality::Low, Quality::Medium, Quality::High] {
            assert_eq!(choose(&[400_000], quality, Some(10_000), None), 0);
            assert_eq!(choose(&[400_000], quality, Some(10_000), Some(0)), 0);
        }
    }
}
