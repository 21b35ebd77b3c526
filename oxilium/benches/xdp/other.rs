//! Another build of the XDP object for `OXILIUM_BENCH_COMPARE` (benches/xdp/single.rs): loaded
//! with maps of its own, into which the services, backends, selection tables and settings of the
//! embedded build's maps are copied entry by entry (the inner selection tables are shared). The
//! copy goes by each map's type in the other build, so a build from before a map changed type
//! (the backends were a hash map before they became an array) still measures.
use super::*;
use abi::lb::{Backend, ServiceKey, ServiceValue, names};
use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapType};
use std::path::Path;

/// A pinned map, typed by what the kernel says it is.
fn open(dir: &Path, name: &str) -> Map {
    let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    match data.info().unwrap().map_type().unwrap() {
        MapType::Hash => Map::HashMap(data),
        MapType::Array => Map::Array(data),
        MapType::ArrayOfMaps => Map::ArrayOfMaps(data),
        t => panic!("{name}: unexpected map type {t:?}"),
    }
}

/// Loads `object` with its own pin folder, its maps holding a copy of those pinned in `from`.
/// `n` tells several other builds apart.
pub fn load(object: &[u8], from: &Path, n: usize) -> (Ebpf, PinDir) {
    let pins = PinDir::new(&format!("oxilium-bench-{}-other{n}", std::process::id()));
    let mut ebpf = loader::load_pinned(object, pins.path()).expect("load the other object");
    let prog: &mut Xdp = ebpf.program_mut("oxilium_lb").unwrap().try_into().unwrap();
    prog.load().expect("verifying the other object");
    let to = pins.path();

    let config: Array<_, LbConfig> = Array::try_from(open(from, names::CONFIG)).unwrap();
    let mut theirs: Array<_, LbConfig> = Array::try_from(open(to, names::CONFIG)).unwrap();
    theirs.set(0, config.get(&0, 0).unwrap(), 0).unwrap();

    let services: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(open(from, names::SERVICES)).unwrap();
    let mut theirs: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(open(to, names::SERVICES)).unwrap();
    let mut ids = Vec::new();
    for r in services.iter() {
        let (k, v) = r.unwrap();
        theirs.insert(k, v, 0).unwrap();
        ids.push(v.id);
    }

    let backends: Array<_, Backend> = Array::try_from(open(from, names::BACKENDS)).unwrap();
    let used: Vec<(u32, Backend)> = (0..)
        .zip(backends.iter().map(Result::unwrap))
        .filter(|(_, b)| b.service_id != 0)
        .collect();
    match open(to, names::BACKENDS) {
        m @ Map::HashMap(_) => {
            let mut theirs: HashMap<_, u32, Backend> = HashMap::try_from(m).unwrap();
            for (id, b) in &used {
                theirs.insert(id, b, 0).unwrap();
            }
        }
        m => {
            let mut theirs: Array<_, Backend> = Array::try_from(m).unwrap();
            for (id, b) in &used {
                theirs.set(*id, b, 0).unwrap();
            }
        }
    }

    let tables: ArrayOfMaps<_, Array<MapData, u32>> =
        ArrayOfMaps::try_from(open(from, names::TABLES)).unwrap();
    let mut theirs: ArrayOfMaps<_, Array<MapData, u32>> =
        ArrayOfMaps::try_from(open(to, names::TABLES)).unwrap();
    for id in ids {
        if let Ok(inner) = tables.get(&id, 0) {
            theirs.set(id, &inner, 0).unwrap();
        }
    }
    (ebpf, pins)
}
