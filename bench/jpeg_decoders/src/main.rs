//! Decode the same JPEGs with libjpeg-turbo (accurate and fast DCT/upsampling), jpeg-decoder
//! and zune-jpeg at full size and at each DCT scale they offer, on one thread, and print
//! images per second as a Markdown table.

use std::time::Instant;

use turbojpeg_sys as tj;

/// Decode `bytes` at `num/denom` with libjpeg-turbo into `out` (RGB).
fn turbo(handle: tj::tjhandle, bytes: &[u8], num: i32, denom: i32, out: &mut Vec<u8>) {
    // SAFETY: a live handle; pointers and lengths describe `bytes` and `out`, sized for the
    // scaled image before decoding.
    unsafe {
        assert_eq!(
            tj::tj3DecompressHeader(handle, bytes.as_ptr(), bytes.len() as _),
            0
        );
        let side = |param| i64::from(tj::tj3Get(handle, param as i32));
        let scale =
            |v: i64| ((v * i64::from(num) + i64::from(denom) - 1) / i64::from(denom)) as usize;
        let (w, h) = (
            scale(side(tj::TJPARAM_TJPARAM_JPEGWIDTH)),
            scale(side(tj::TJPARAM_TJPARAM_JPEGHEIGHT)),
        );
        assert_eq!(
            tj::tj3SetScalingFactor(handle, tj::tjscalingfactor { num, denom }),
            0
        );
        out.resize(w * h * 3, 0);
        let done = tj::tj3Decompress8(
            handle,
            bytes.as_ptr(),
            bytes.len() as _,
            out.as_mut_ptr(),
            (w * 3) as i32,
            tj::TJPF_TJPF_RGB as i32,
        );
        assert_eq!(done, 0);
    }
}

fn rate(files: &[Vec<u8>], mut decode: impl FnMut(&[u8])) -> f64 {
    let started = Instant::now();
    for bytes in files {
        decode(bytes);
    }
    files.len() as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let folder = std::env::args().nth(1).expect("a folder of .jpg files");
    let limit: usize = std::env::args()
        .nth(2)
        .map_or(400, |n| n.parse().expect("a count"));
    let mut paths: Vec<_> = std::fs::read_dir(&folder)
        .expect("a readable folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .take(limit)
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    println!(
        "{} JPEGs from {folder}, one thread, images/s\n",
        files.len()
    );
    println!("| decoder | 1/1 | 1/2 | 3/8 | 1/4 | 1/8 |\n|---|---|---|---|---|---|");
    let mut out = Vec::new();
    for (name, fast) in [
        ("libjpeg-turbo 3.1 (accurate DCT, smooth upsampling)", 0),
        ("libjpeg-turbo 3.1 (fast DCT and upsampling)", 1),
    ] {
        // SAFETY: tj3Init has no preconditions; the handle lives until tj3Destroy below.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
        unsafe {
            tj::tj3Set(handle, tj::TJPARAM_TJPARAM_FASTDCT as i32, fast);
            tj::tj3Set(handle, tj::TJPARAM_TJPARAM_FASTUPSAMPLE as i32, fast);
        }
        let cells: Vec<String> = [(1, 1), (1, 2), (3, 8), (1, 4), (1, 8)]
            .iter()
            .map(|&(num, denom)| {
                format!(
                    "{:.0}",
                    rate(&files, |b| turbo(handle, b, num, denom, &mut out))
                )
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
        unsafe { tj::tj3Destroy(handle) };
    }
    let cells: Vec<String> = [1u16, 2, 0, 4, 8]
        .iter()
        .map(|&denom| {
            if denom == 0 {
                return "–".to_string();
            }
            format!(
                "{:.0}",
                rate(&files, |b| {
                    let mut d = jpeg_decoder::Decoder::new(b);
                    d.read_info().unwrap();
                    let info = d.info().unwrap();
                    d.scale((info.width / denom).max(1), (info.height / denom).max(1))
                        .unwrap();
                    std::hint::black_box(d.decode().unwrap());
                })
            )
        })
        .collect();
    println!("| jpeg-decoder 0.3 | {} |", cells.join(" | "));
    let full = rate(&files, |b| {
        let options = zune_core::options::DecoderOptions::default()
            .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGB);
        let mut d = zune_jpeg::JpegDecoder::new_with_options(
            zune_core::bytestream::ZCursor::new(b),
            options,
        );
        std::hint::black_box(d.decode().unwrap());
    });
    println!("| zune-jpeg 0.5 (no DCT scaling) | {full:.0} | – | – | – | – |");
}
