#!/usr/bin/env bash
# Renders every way deploy/k8s is meant to be used with `kubectl kustomize`
# (offline), one file each in OUT:
#   base.yaml                   the base alone
#   <overlay>.yaml              each of overlays/*
#   <overlay>+<component>.yaml  each overlay with each of components/*
#   <overlay>+all.yaml          each overlay with every component
# (an overlay with components is rendered through a kustomization in
# OUT/kustomize/, which names them by relative paths as users' overlays do).
#   render.sh K8S_DIR OUT
# Prints the files made. Exit 77 (a visible skip) without kubectl, 1 when a
# render fails (kustomize's message shows which and why).
set -euo pipefail
k8s="$(cd "${1:?usage: render.sh K8S_DIR OUT}" && pwd)"
out="${2:?usage: render.sh K8S_DIR OUT}"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "SKIP: kubectl is not installed (it brings kustomize: package kubectl from Kubernetes' or Google Cloud's apt repository, not Debian's kubernetes-client), so the manifests cannot be rendered"
  exit 77
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -rf "$out/kustomize"
rm -f "$out"/*.yaml

render() {  # name, kustomization dir
  if ! kubectl kustomize "$2" > "$out/$1.yaml.tmp" 2> "$out/$1.err"; then
    echo "FAIL: kubectl kustomize ${2#"$k8s"/} ($1):" >&2
    cat "$out/$1.err" >&2
    exit 1
  fi
  rm -f "$out/$1.err"
  [[ -s "$out/$1.yaml.tmp" ]] || { echo "FAIL: $1 renders nothing" >&2; exit 1; }
  mv "$out/$1.yaml.tmp" "$out/$1.yaml"
  echo "$out/$1.yaml"
}

render base "$k8s/base"
components=()
for c in "$k8s"/components/*/; do
  [[ -f "$c/kustomization.yaml" ]] && components+=("$(basename "$c")")
done
for o in "$k8s"/overlays/*/; do
  [[ -f "$o/kustomization.yaml" ]] || continue
  overlay="$(basename "$o")"
  render "$overlay" "$o"
  for set in "${components[@]}" all; do
    dir="$out/kustomize/$overlay+$set"
    mkdir -p "$dir"
    rel="$(realpath --relative-to="$dir" "$k8s")"
    {
      echo "apiVersion: kustomize.config.k8s.io/v1beta1"
      echo "kind: Kustomization"
      echo "resources:"
      echo "  - $rel/overlays/$overlay"
      echo "components:"
      if [[ "$set" == all ]]; then
        for c in "${components[@]}"; do echo "  - $rel/components/$c"; done
      else
        echo "  - $rel/components/$set"
      fi
    } > "$dir/kustomization.yaml"
    render "$overlay+$set" "$dir"
  done
done
