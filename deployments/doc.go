// Package deployments holds no code: its tests check the deployment files
// next to it against the binaries they start.
//
//   - docker/: the Dockerfile (FROM scratch, static binaries, busybox for
//     the agent's shell) and docker-compose.yml (3 coordinators, N agents).
//     TestComposeCluster builds the images, starts the cluster under a
//     unique project name and runs a real build through it; it is skipped,
//     with the reason, where no Docker engine or docker-compose is present.
//   - kubernetes/: TestKubernetesManifests parses every manifest and checks
//     that each --flag passed to kiln-coordinator or kiln-agent exists, that
//     each $(VAR) an argument uses is defined, and that the coordinator
//     StatefulSet, its headless Service and the ConfigMap's member list
//     agree.
//   - systemd/: TestSystemdUnits checks the flags of ExecStart and runs
//     systemd-analyze verify where it is installed.
//
// The flag checks use binaries built as integration/ builds them (shared
// build cache); only the compose test builds the static ones, with
// docker/prepare.sh, the script users run.
package deployments
