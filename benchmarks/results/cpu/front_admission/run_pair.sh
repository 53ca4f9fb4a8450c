set -u
cd /work/main
P=/tmp/venvtest/bin/python
O=/tmp/cpuload/pair
mkdir -p $O
git checkout 8942a16 -- eclip_ray benchmarks/serve_load.py deployments
for preset in resnet18 tiny-cnn; do
  $P benchmarks/serve_load.py --preset $preset --duration-s 20 --timeout-s 30 --out $O/${preset}_before.json > $O/${preset}_before.log 2>&1
done
git checkout HEAD -- eclip_ray benchmarks/serve_load.py deployments
git status --short
for preset in resnet18 tiny-cnn; do
  $P benchmarks/serve_load.py --preset $preset --duration-s 20 --out $O/${preset}_after.json > $O/${preset}_after.log 2>&1
done
echo done
