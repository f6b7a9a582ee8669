//! Writer → reader round trips: every metadata type, several tensor types,
//! alignment, typed reads, atomic path writes.
mod common;

use common::*;
use gguf::{dequant, Array, GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType, ALL_GGML_TYPES};
use half::f16;

#[test]
fn every_metadata_type_round_trips_in_order() {
    let bytes = sample_writer(None).to_bytes().unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    let expected = every_value();
    assert_eq!(file.metadata(), expected.as_slice());
    assert_eq!(file.get("t.u64"), Some(&Value::U64(u64::MAX)));
    assert_eq!(file.get_str("general.architecture"), Some("llama"));
    assert_eq!(file.get_u64("t.u32"), Some(4_000_000_000));
    assert_eq!(file.get_u64("t.i8"), None, "negative values are not u64");
    assert_eq!(file.get_f64("t.f64"), Some(std::f64::consts::PI));
    assert_eq!(file.get_array("a.empty_u32"), Some(&Array::U32(vec![])));
    assert_eq!(file.get_array("a.empty_u32").unwrap().element_type(), ValueType::U32);
    assert!(file.get("missing").is_none());
}

#[test]
fn tensors_round_trip_with_infos_and_bytes() {
    let writer = sample_writer(None);
    let file = GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap();
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "bf16", "q8_0", "tq1_0", "tq2_0", "q4_k", "i8"]);
    let tq2 = file.tensor_info("tq2_0").unwrap();
    assert_eq!(tq2.dims, vec![512, 1, 1, 2]);
    assert_eq!(tq2.shape(), vec![2, 1, 1, 512]);
    assert_eq!(tq2.ggml_type, GgmlType::TQ2_0);
    assert_eq!(tq2.n_bytes, 4 * 66);
    assert_eq!(file.tensor_bytes("tq2_0").unwrap(), pseudo_bytes(4 * 66, 2).as_slice());
    assert_eq!(file.tensor_bytes("tq1_0").unwrap(), pseudo_bytes(2 * 54, 1).as_slice());
    assert_eq!(file.tensor_bytes("i8").unwrap(), &[1, 2, 3]);
    for t in file.tensors() {
        assert_eq!(t.offset % 32, 0, "{} misaligned", t.name);
        assert_eq!((file.data_start() + t.offset) % 32, 0);
    }
    assert!(matches!(file.tensor_bytes("nope"), Err(GgufError::TensorNotFound(n)) if n == "nope"));
}

#[test]
fn typed_reads_convert_float_types_and_dequantize_q8_0() {
    let file = GgufFile::from_bytes(sample_writer(None).to_bytes().unwrap()).unwrap();
    let expected: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
    // These values are exact in f16 and bf16.
    assert_eq!(file.tensor_f32("f32").unwrap(), expected);
    assert_eq!(file.tensor_f32("f16").unwrap(), expected);
    assert_eq!(file.tensor_f32("bf16").unwrap(), expected);
    let q = file.tensor_f32("q8_0").unwrap();
    assert_eq!(q.len(), 128);
    for (b, block) in q.chunks(32).enumerate() {
        let d = 0.5 * (b + 1) as f32;
        for (i, &x) in block.iter().enumerate() {
            assert_eq!(x, d * (i as f32 - 16.0));
        }
    }
    let err = file.tensor_f32("tq2_0").unwrap_err();
    assert!(err.to_string().contains("TQ2_0"), "{err}");
}

#[test]
fn q8_0_dequant_matches_definition() {
    let mut block = f16::from_f32(-0.125).to_le_bytes().to_vec();
    block.extend((0..32).map(|i: i32| (i * 8 - 128) as i8 as u8));
    let out = dequant::q8_0_to_f32(&block);
    for (i, x) in out.iter().enumerate() {
        assert_eq!(*x, -0.125 * ((i as i32 * 8 - 128) as i8) as f32);
    }
}

#[test]
fn non_default_alignment_is_honoured() {
    for alignment in [1u32, 8, 64, 4096] {
        let bytes = sample_writer(Some(alignment)).to_bytes().unwrap();
        let file = GgufFile::from_bytes(bytes.clone()).unwrap();
        assert_eq!(file.alignment(), alignment as u64);
        assert_eq!(file.data_start() % alignment as u64, 0);
        for t in file.tensors() {
            assert_eq!((file.data_start() + t.offset) % alignment as u64, 0);
        }
        assert_eq!(bytes.len() as u64 % alignment as u64, 0, "file ends padded");
        assert_eq!(file.tensor_f32("f32").unwrap().len(), 24);
    }
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add("k", 1u32).unwrap();
    assert!(matches!(w.add("k", 2u32), Err(GgufError::DuplicateKey { .. })));
    assert!(w.add("", 1u8).is_err());
    assert!(matches!(w.add("general.alignment", 3u32), Err(GgufError::InvalidAlignment { .. })));
    assert!(matches!(w.add("general.alignment", 0u32), Err(GgufError::InvalidAlignment { .. })));
    assert!(matches!(w.add("general.alignment", 64u64), Err(GgufError::InvalidAlignment { .. })));
    let mut deep = Array::U8(vec![1]);
    for _ in 0..gguf::MAX_ARRAY_DEPTH {
        deep = Array::Array(vec![deep]);
    }
    assert!(w.add("deep", deep).is_err());

    w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16]).unwrap();
    assert!(matches!(w.add_tensor("t", &[4], GgmlType::F32, vec![0u8; 16]), Err(GgufError::DuplicateTensor { .. })));
    let err = w.add_tensor("short", &[4], GgmlType::F32, vec![0u8; 15]).unwrap_err();
    assert!(err.to_string().contains("need 16 bytes, got 15"), "{err}");
    assert!(w.add_tensor("rows", &[100], GgmlType::TQ2_0, vec![0u8; 66]).is_err(), "row not whole blocks");
    assert!(w.add_tensor("dims5", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0u8; 4]).is_err());
    assert!(w.add_tensor("dims0", &[], GgmlType::F32, vec![0u8; 4]).is_err());
    assert!(w.add_tensor("ovf", &[u64::MAX, 2], GgmlType::F32, vec![]).is_err());
    assert!(w.add_tensor("x".repeat(64), &[1], GgmlType::F32, vec![0u8; 4]).is_err());
    // The failed adds left nothing behind.
    let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(file.tensors().len(), 1);
    assert_eq!(file.metadata().len(), 1);
}

#[test]
fn borrowed_tensor_data_is_written_unchanged() {
    let data = pseudo_bytes(66 * 3, 9);
    let mut w = GgufWriter::new();
    w.add_tensor("borrowed", &[256, 3], GgmlType::TQ2_0, data.as_slice()).unwrap();
    let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(file.tensor_bytes("borrowed").unwrap(), data.as_slice());
}

#[test]
fn atomic_write_to_path_and_mmap_open() {
    let dir = std::env::temp_dir().join(format!("gguf-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"old contents").unwrap();
    let w = sample_writer(Some(64));
    w.write_to_path(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.as_bytes(), w.to_bytes().unwrap().as_slice());
    assert_eq!(file.alignment(), 64);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temp file left behind: {leftovers:?}");
    // A write into a missing directory fails with the path in the message.
    let err = w.write_to_path(dir.join("missing/x.gguf")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let err = GgufFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(&err, GgufError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_ggml_type_can_be_written_and_listed() {
    let mut w = GgufWriter::new();
    for t in ALL_GGML_TYPES {
        let row = t.block_size() * 2;
        let n = t.bytes_for(row * 3).unwrap() as usize;
        w.add_tensor(format!("t{}", t.id()), &[row, 3], t, pseudo_bytes(n, t.id() as u64)).unwrap();
    }
    let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    for (info, t) in file.tensors().iter().zip(ALL_GGML_TYPES) {
        assert_eq!(info.ggml_type, t);
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert_eq!(GgmlType::from_name(t.name()), Some(t));
        assert_eq!(file.tensor_bytes(&info.name).unwrap().len() as u64, info.n_bytes);
    }
    assert_eq!(GgmlType::from_id(36), None, "bitnet.cpp's private ids are not ggml types");
    assert_eq!((GgmlType::TQ1_0.id(), GgmlType::TQ2_0.id(), GgmlType::BF16.id()), (34, 35, 30));
}

#[test]
fn version_2_files_are_read() {
    let mut bytes = sample_writer(None).to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(file.version(), 2);
    assert_eq!(file.tensors().len(), 8);
}

#[test]
fn zero_sized_and_tensorless_files() {
    let w = GgufWriter::new();
    let bytes = w.to_bytes().unwrap();
    assert_eq!(bytes.len(), 32, "24-byte header padded to 32");
    let file = GgufFile::from_bytes(bytes[..24].to_vec()).unwrap();
    assert!(file.tensors().is_empty() && file.metadata().is_empty());

    let mut w = GgufWriter::new();
    w.add_tensor("empty", &[0, 5], GgmlType::F32, vec![]).unwrap();
    w.add_tensor("after", &[2], GgmlType::F32, f32_bytes(&[1.0, 2.0])).unwrap();
    let file = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(file.tensor_bytes("empty").unwrap(), &[] as &[u8]);
    assert_eq!(file.tensor_f32("after").unwrap(), vec![1.0, 2.0]);
}

#[test]
#[cfg(target_os = "linux")]
fn released_tensor_pages_leave_the_resident_set_and_read_back_unchanged() {
    let rss_file_kib = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find_map(|l| l.strip_prefix("RssFile:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
    };
    let dir = std::env::temp_dir().join(format!("gguf-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.gguf");
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let mut w = GgufWriter::new();
    w.add_tensor("small", &[3], GgmlType::I8, vec![7, 8, 9]).unwrap();
    w.add_tensor("big", &[big.len() as u64], GgmlType::I8, big.clone()).unwrap();
    w.add_tensor("after", &[2], GgmlType::I8, vec![5, 6]).unwrap();
    w.write_to_path(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let touched: u64 = file.as_bytes().iter().step_by(4096).map(|&b| b as u64).sum();
    assert!(touched > 0);
    let before = rss_file_kib();
    file.release_tensor_pages("big").unwrap();
    let after = rss_file_kib();
    // 8 MiB of pages (less the two partial ones at its ends) left this process's resident set.
    assert!(before >= after + 7 * 1024, "RssFile {before} kB -> {after} kB");
    assert_eq!(file.tensor_bytes("big").unwrap(), &big[..]);
    assert_eq!(file.tensor_bytes("small").unwrap(), &[7, 8, 9]);
    assert_eq!(file.tensor_bytes("after").unwrap(), &[5, 6]);
    assert!(matches!(file.release_tensor_pages("absent"), Err(GgufError::TensorNotFound(_))));
    // In-memory files have nothing to give back.
    GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap().release_tensor_pages("big").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
