# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# TAP output for the shell tests (tests/integration/lib.sh, tests/daemon/ctl-lib.sh and the
# scripts that source them): plan, diag, ok, not_ok, ok_if, check, check_fails, is, like,
# unlike, skip, skip_all (exit 77, or $BYWAY_TAP_SKIP_EXIT when meson runs it), bail_out and
# done_testing (prints the plan if none was given and exits 0 or 1). TAP_DONE tells an EXIT
# trap whether the script reached its end. Source it; do not run it.

TAP_N=0
TAP_FAILED=0
TAP_PLANNED=''
TAP_DONE=0

# ---------------------------------------------------------------------------------------------
# TAP

plan() {
	TAP_PLANNED=$1
	printf '1..%d\n' "$1"
}

# diag MSG...: a diagnostic line (also for multi-line text: every line gets a '# ').
diag() {
	local line
	while IFS= read -r line; do printf '# %s\n' "$line"; done <<<"$*"
}

ok() {
	TAP_N=$((TAP_N + 1))
	printf 'ok %d - %s\n' "$TAP_N" "$1"
}

# not_ok DESC [DETAIL...]: a failed test point; DETAIL goes out as diagnostics.
not_ok() {
	TAP_N=$((TAP_N + 1))
	TAP_FAILED=$((TAP_FAILED + 1))
	printf 'not ok %d - %s\n' "$TAP_N" "$1"
	shift
	local d
	for d in "$@"; do diag "$d"; done
	return 0
}

# ok_if STATUS DESC [DETAIL...]: ok when STATUS is 0.
ok_if() {
	local st=$1
	shift
	if [[ $st == 0 ]]; then ok "$1"; else not_ok "$@"; fi
}

# check DESC CMD...: runs CMD; ok when it exits 0, else not ok with its output.
check() {
	local desc=$1 out st
	shift
	out=$("$@" 2>&1)
	st=$?
	if ((st == 0)); then
		ok "$desc"
	else
		not_ok "$desc" "command: $*" "exit status $st" "$out"
	fi
	return "$st"
}

# check_fails DESC CMD...: ok when CMD exits non-zero.
check_fails() {
	local desc=$1 out st
	shift
	out=$("$@" 2>&1)
	st=$?
	if ((st != 0)); then
		ok "$desc"
	else
		not_ok "$desc" "command: $*" "succeeded but should have failed" "$out"
	fi
}

# is GOT EXPECTED DESC
is() {
	if [[ $1 == "$2" ]]; then
		ok "$3"
	else
		not_ok "$3" "got:      '$1'" "expected: '$2'"
	fi
}

# like GOT REGEX DESC
like() {
	if [[ $1 =~ $2 ]]; then
		ok "$3"
	else
		not_ok "$3" "got:      '$1'" "expected to match: $2"
	fi
}

# unlike GOT REGEX DESC
unlike() {
	if [[ $1 =~ $2 ]]; then
		not_ok "$3" "got:      '$1'" "expected not to match: $2"
	else
		ok "$3"
	fi
}

# skip DESC REASON: a test point that could not run here.
skip() {
	TAP_N=$((TAP_N + 1))
	printf 'ok %d - %s # SKIP %s\n' "$TAP_N" "$1" "$2"
}

# skip_all REASON: the whole test cannot run on this machine.
skip_all() {
	printf '1..0 # SKIP %s\n' "$1"
	TAP_DONE=1
	exit "${BYWAY_TAP_SKIP_EXIT:-77}"
}

# bail_out REASON: stop now (a precondition of the remaining tests failed); cleanup still runs.
bail_out() {
	printf 'Bail out! %s\n' "$1"
	TAP_DONE=1
	exit 1
}

# done_testing: prints the plan if none was given, checks the count, exits 0 or 1.
done_testing() {
	TAP_DONE=1
	if [[ -z $TAP_PLANNED ]]; then
		printf '1..%d\n' "$TAP_N"
	elif ((TAP_N != TAP_PLANNED)); then
		diag "planned $TAP_PLANNED tests but ran $TAP_N"
		exit 1
	fi
	((TAP_FAILED == 0)) || diag "failed $TAP_FAILED of $TAP_N"
	((TAP_FAILED == 0)) && exit 0
	exit 1
}
