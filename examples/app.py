"""The example application declared in Python: ResNet-50 and BERT-base co-located on one GPU.

    python examples/app.py                 # a local Ray instance, serving until Ctrl-C
    serve run examples.app:app             # the same app with Ray Serve's CLI (from the repository root)

It is the application of deployments/example.yaml. Models load in the
background: GET /v2/health/ready answers 200 once both are up. Then try
examples/client.py.
"""

from eclip_ray.serve import AppConfig, ModelConfig, build_app

config = AppConfig(
    gpus=1,  # one GPU actor; without a GPU it runs the CPU backend
    models=[
        # Example SLOs for an H100; batching never waits past what the SLO leaves.
        ModelConfig(name="resnet50", max_batch_size=8, batch_wait_timeout_s=0.005, slo_ms=50),
        ModelConfig(name="bert-base", max_batch_size=8, batch_wait_timeout_s=0.005, slo_ms=100),
    ],
)
app = build_app(config)


def main() -> None:
    import time

    import ray
    from ray import serve

    ray.init()
    serve.start(http_options=config.http_options())
    serve.run(app, name="eclip-example", route_prefix="/")
    print(f"serving at http://{config.host}:{config.port}/v2; models are ready when /v2/health/ready says 200")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    main()
