{ lib, rustPlatform, makeWrapper, git }:

rustPlatform.buildRustPackage {
  pname = "betcycle";
  version = (lib.importTOML ../Cargo.toml).package.version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../askama.toml
      ../src
      ../web
      ../policies
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The `self-update` feature is off: the Nix store is read-only and Nix updates BetCycle.
  buildNoDefaultFeatures = true;

  nativeBuildInputs = [ makeWrapper ];

  # The tests drive real git repositories, Chromium and promtool; run them in
  # `nix develop` with `cargo test`.
  doCheck = false;

  # BetCycle mirrors repositories with the git command line.
  postInstall = ''
    wrapProgram $out/bin/betcycle --prefix PATH : ${lib.makeBinPath [ git ]}
  '';

  meta = {
    description = "Self-hosted software delivery platform in one binary";
    homepage = "https://github.com/betcycle/betcycle";
    license = lib.licenses.asl20;
    mainProgram = "betcycle";
    platforms = lib.platforms.linux;
  };
}
