# BetCycle starter policy for the deploy gate. It applies to production-like
# environments (input.environment.production): named production, prod or live, or
# marked production in their settings. Edit it, or add your own modules beside it.
package betcycle.deploy

import rego.v1

production if input.environment.production

# Green CI required: the release's run must have succeeded with no failing test.
deny contains msg if {
	production
	input.run.status != "succeeded"
	msg := sprintf("the release's run #%d is %s, not succeeded", [input.run.number, input.run.status])
}

# Failing tests (failures and errors in the release's test reports) block production
# even when the steps exited 0, and are a warning elsewhere. The message names them.
failing_tests := concat("; ", input.tests.failing) if count(input.tests.failing) > 0

else := "see the run's test report"

deny contains msg if {
	production
	input.tests.failed > 0
	msg := sprintf("%d test(s) failed in the release's run: %s", [input.tests.failed, failing_tests])
}

warn contains msg if {
	not production
	input.tests.failed > 0
	msg := sprintf("%d test(s) failed in the release's run: %s", [input.tests.failed, failing_tests])
}

# Allowed branches: production takes main and release/* only.
allowed_branch if input.release.branch == "main"

allowed_branch if startswith(input.release.branch, "release/")

deny contains msg if {
	production
	not allowed_branch
	msg := sprintf("%s takes releases from main or release/* only, not from %s", [input.environment.name, input.release.branch])
}

# No critical findings from security reports.
deny contains msg if {
	production
	input.findings.critical > 0
	msg := sprintf("the release has %d critical finding(s)", [input.findings.critical])
}

# Approval required: a deployment to production starts only with at least one approval.
deny contains msg if {
	production
	input.stage == "start"
	count(input.approvals) == 0
	msg := sprintf("%s needs at least one approval before a deployment starts", [input.environment.name])
}

warn contains msg if {
	production
	input.coverage != null
	input.coverage < 50
	msg := sprintf("line coverage is %.1f%%, below 50%%", [input.coverage])
}
