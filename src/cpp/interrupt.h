// Long loops poll the caller for a request to stop (Ctrl-C) between their steps: at most
// once per period, so that an interrupt is seen within milliseconds while the poll (in
// Python: taking the GIL to run signal handlers) costs nothing measurable.
#pragma once

#include <chrono>
#include <functional>

#include "errors.h"

namespace fastlm {

class InterruptPoll {
public:
    using Clock = std::chrono::steady_clock;

    // stop_requested() returns true to stop; an empty function never stops.
    explicit InterruptPoll(std::function<bool()> stop_requested,
                           Clock::duration period = std::chrono::milliseconds(5))
        : stop_requested_(std::move(stop_requested)), period_(period), last_(Clock::now()) {}

    // Throws Interrupted when a poll that is due asks to stop.
    void operator()() {
        if (!stop_requested_) return;
        const Clock::time_point now = Clock::now();
        if (now - last_ < period_) return;
        last_ = now;
        if (stop_requested_()) throw Interrupted();
    }

private:
    std::function<bool()> stop_requested_;
    Clock::duration period_;
    Clock::time_point last_;
};

}  // namespace fastlm
