// Pins gitleaks, the secret scanner .ci/run runs over the git history.
// Its own module keeps gitleaks' dependencies out of the product's go.mod.
// Since v8 the module path is github.com/zricethezav/gitleaks/v8.
module github.com/xpress-ops/tower/ci/gitleaks

go 1.26

require github.com/zricethezav/gitleaks/v8 v8.21.2
