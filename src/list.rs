//! Rendering `nixboot list`: a human table and the JSON document.
//! dom0 side; guest strings are escaped in the table (JSON escapes them
//! itself).

use serde_json::json;

use crate::error::EscapedBare as Escaped;
use crate::ipc::Listing;
use crate::nixos::select::{label, rfc3339};

/// The JSON document: `{"generations":[…], "default":{…}}`, generations
/// newest first; `default` is the entry a boot without `--entry` starts
/// from (before any fallback), with why.
pub fn json(l: &Listing) -> String {
    let gens: Vec<serde_json::Value> = l
        .generations
        .iter()
        .map(|g| {
            let e = g.generation.as_ref().map(|g| &g.entry);
            json!({
                "profile": g.profile.as_deref().unwrap_or("system"),
                "generation": g.number,
                "current": g.current,
                "built": g.mtime.and_then(rfc3339),
                "nixosVersion": e.map(|e| &e.nixos_version),
                "label": e.map(|e| label(e, g.mtime)),
                "kernel": e.map(|e| &e.kernel),
                "initrd": e.and_then(|e| e.initrd.as_ref()),
                "init": e.map(|e| &e.init),
                "kernelParams": e.map(|e| &e.kernel_params),
                "specialisations": g.generation.as_ref().map(|g| g.specialisations.iter().filter_map(|s| s.specialisation.clone()).collect::<Vec<_>>()).unwrap_or_default(),
                "bootable": g.problem.is_none(),
                "xenModes": g.xen_modes,
                "problem": g.problem,
            })
        })
        .collect();
    let default = l.default.as_ref().map(|d| {
        json!({
            "profile": d.profile.as_deref().unwrap_or("system"),
            "generation": d.number,
            "specialisation": d.specialisation,
            "reason": l.default_reason,
        })
    });
    let mut s = serde_json::to_string_pretty(&json!({ "generations": gens, "default": default })).unwrap_or_default();
    s.push('\n');
    s
}

/// The table: one line per generation and specialisation; the
/// generations of each `nixos-rebuild -p` profile follow the system
/// profile's under a heading.
pub fn table(l: &Listing) -> String {
    let mut s = String::new();
    let mut profile = None;
    for g in &l.generations {
        if let Some(p) = &g.profile
            && profile != Some(p)
        {
            profile = Some(p);
            let p = Escaped(p.as_bytes());
            s.push_str(&format!("profile '{p}' (--profile={p}):\n"));
        }
        let mark = if g.current { "*" } else { " " };
        let n = g.number.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        match &g.generation {
            Some(gen_) => {
                let why = g
                    .problem
                    .as_ref()
                    .map(|p| format!("  (not bootable: {})", Escaped(p.as_bytes())));
                let modes = if g.problem.is_none() && !g.xen_modes.is_empty() {
                    let m: Vec<&str> = g.xen_modes.iter().map(|m| m.name()).collect();
                    format!("  [{}]", m.join(", "))
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "{mark} {n:>5}  {}{modes}{}\n",
                    Escaped(label(&gen_.entry, g.mtime).as_bytes()),
                    why.unwrap_or_default()
                ));
                for sp in &gen_.specialisations {
                    s.push_str(&format!(
                        "  {:>5}  {}\n",
                        format!("{n}/{}", sp.specialisation.as_deref().unwrap_or("")),
                        Escaped(label(sp, g.mtime).as_bytes())
                    ));
                }
            }
            None => s.push_str(&format!(
                "{mark} {n:>5}  (not bootable: {})\n",
                Escaped(g.problem.as_deref().unwrap_or("unknown").as_bytes())
            )),
        }
    }
    if let Some(r) = &l.default_reason {
        s.push_str(&format!("default: {}\n", Escaped(r.as_bytes())));
    }
    s
}
