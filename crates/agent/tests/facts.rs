//! Device facts parsed from sample outputs of the files and tools they come from.

use effp_agent::facts::{
    parse_cpuinfo_model, parse_device_tree_model, parse_dpkg_version, parse_jetson_clocks,
    parse_nv_tegra_release, parse_nvpmodel,
};

#[test]
fn the_board_model_loses_its_trailing_nul() {
    assert_eq!(
        parse_device_tree_model(b"NVIDIA Jetson Xavier NX Developer Kit\0").as_deref(),
        Some("NVIDIA Jetson Xavier NX Developer Kit")
    );
    assert_eq!(parse_device_tree_model(b"\0"), None);
}

#[test]
fn the_cpu_model_comes_from_cpuinfo() {
    let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t\t: fpu\n";
    assert_eq!(
        parse_cpuinfo_model(x86).as_deref(),
        Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
    );
    // Some ARM kernels name no model, only the SoC.
    let arm = "processor\t: 0\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x4e\n\nHardware\t: NVIDIA Jetson Xavier NX\n";
    assert_eq!(
        parse_cpuinfo_model(arm).as_deref(),
        Some("NVIDIA Jetson Xavier NX")
    );
    assert_eq!(parse_cpuinfo_model("processor\t: 0\n"), None);
}

#[test]
fn the_l4t_release_joins_major_and_revision() {
    let r35 = "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 15:19:21 UTC 2023\n\
               # KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n";
    assert_eq!(parse_nv_tegra_release(r35).as_deref(), Some("35.3.1"));
    let r32 = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n";
    assert_eq!(parse_nv_tegra_release(r32).as_deref(), Some("32.7.1"));
    assert_eq!(parse_nv_tegra_release("garbage"), None);
}

#[test]
fn package_versions_drop_the_debian_revision() {
    assert_eq!(
        parse_dpkg_version("8.5.2.2-1+cuda11.4").as_deref(),
        Some("8.5.2.2")
    );
    assert_eq!(parse_dpkg_version("5.1-b147").as_deref(), Some("5.1"));
    assert_eq!(parse_dpkg_version("5.1.1-b56\n").as_deref(), Some("5.1.1"));
    assert_eq!(parse_dpkg_version("1:2.3-4").as_deref(), Some("2.3"));
    assert_eq!(parse_dpkg_version(""), None);
}

#[test]
fn the_power_mode_comes_from_nvpmodel() {
    let xavier = "NV Fan Mode:quiet\nNV Power Mode: MODE_20W_6CORE\n8\n";
    assert_eq!(parse_nvpmodel(xavier).as_deref(), Some("MODE_20W_6CORE"));
    assert_eq!(
        parse_nvpmodel("NV Power Mode: MAXN\n0\n").as_deref(),
        Some("MAXN")
    );
    assert_eq!(parse_nvpmodel("nvpmodel: command not found"), None);
}

/// `jetson_clocks --show` on a Xavier NX after `sudo jetson_clocks`.
const PINNED: &str = "\
SOC family:tegra194  Machine:NVIDIA Jetson Xavier NX Developer Kit
Online CPUs: 0-5
cpu0: Online=1 Governor=schedutil MinFreq=1907200 MaxFreq=1907200 CurrentFreq=1907200 IdleStates: C1=0 c6=0 
cpu1: Online=1 Governor=schedutil MinFreq=1907200 MaxFreq=1907200 CurrentFreq=1907200 IdleStates: C1=0 c6=0 
cpu2: Online=1 Governor=schedutil MinFreq=1907200 MaxFreq=1907200 CurrentFreq=1907200 IdleStates: C1=0 c6=0 
cpu3: Online=1 Governor=schedutil MinFreq=1907200 MaxFreq=1907200 CurrentFreq=1907200 IdleStates: C1=0 c6=0 
cpu4: Online=1 Governor=schedutil MinFreq=1907200 MaxFreq=1907200 CurrentFreq=1907200 IdleStates: C1=0 c6=0 
cpu5: Online=1 Governor=schedutil MinFreq=1907200 MaxFreq=1907200 CurrentFreq=1907200 IdleStates: C1=0 c6=0 
GPU MinFreq=1109250000 MaxFreq=1109250000 CurrentFreq=1109250000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1
Fan: PWM=255
NV Power Mode: MODE_20W_6CORE
";

#[test]
fn pinned_clocks_have_equal_minimum_and_maximum() {
    assert_eq!(parse_jetson_clocks(PINNED), Some(true));
    let gpu_free = PINNED.replace("GPU MinFreq=1109250000", "GPU MinFreq=114750000");
    assert_eq!(parse_jetson_clocks(&gpu_free), Some(false));
    let cpu_free = PINNED.replace(
        "cpu3: Online=1 Governor=schedutil MinFreq=1907200",
        "cpu3: Online=1 Governor=schedutil MinFreq=1190400",
    );
    assert_eq!(parse_jetson_clocks(&cpu_free), Some(false));
    // An offline core does not count.
    let offline = PINNED.replace(
        "cpu5: Online=1 Governor=schedutil MinFreq=1907200",
        "cpu5: Online=0 Governor=schedutil MinFreq=1190400",
    );
    assert_eq!(parse_jetson_clocks(&offline), Some(true));
    assert_eq!(
        parse_jetson_clocks("This script requires root privilege"),
        None
    );
}
