//! CPU lists as Linux writes them (`0-3,6`): parsed from `--cpus` flags,
//! printed in messages and tables.

/// Parses `4-7`, `0,2`, `0-1,6`; CPUs come back sorted, without repeats.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let bad = |part: &str| format!("`{part}` in CPU list `{text}` is not a CPU number or a range like 4-7");
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
            None => (part.parse(), part.parse()),
        };
        let (Ok(first), Ok(last)) = (first, last) else { return Err(bad(part)) };
        if first > last {
            return Err(bad(part));
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// A parsed `--cpus` flag (a plain `Vec` would read as a repeated flag to clap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl std::str::FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_cpu_list(s).map(CpuList)
    }
}

/// The compact form of `cpus` (sorted): runs of consecutive CPUs as ranges.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = i;
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        parts.push(if i == start { cpus[i].to_string() } else { format!("{}-{}", cpus[start], cpus[i]) });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        assert_eq!(parse_cpu_list("4-7").unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(parse_cpu_list("6, 0-1,1").unwrap(), vec![0, 1, 6]);
        assert_eq!(format_cpu_list(&[0, 1, 2, 6, 8, 9]), "0-2,6,8-9");
        assert_eq!(format_cpu_list(&[]), "");
        for bad in ["", "a", "3-1", "1-", "-2"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }
}
