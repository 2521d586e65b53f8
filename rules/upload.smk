rule upload:
    """Publish the bundles named in config upload.devices to the Hugging Face Hub, each tagged with its
    version id. A dry run (the plan, written to results/upload/) unless upload.enabled is true; a bundle
    whose version is already on the Hub is not sent again."""
    input:
        packages=[package_dir(m, d) for m in ENABLED for d in config["upload"]["devices"]],
    output:
        records=uploads(),
    params:
        repos=lambda wildcards: {
            upload_record(m, d): upload_repo(m, d) for m in ENABLED for d in config["upload"]["devices"]
        },
        private=config["upload"]["private"],
        enabled=config["upload"]["enabled"],
        code=code_version("upload"),
    log:
        log_file("upload", "upload"),
    benchmark:
        benchmark_file("upload", "upload")
    conda:
        "../envs/upload.yaml"
    script:
        "../scripts/upload.py"
