% rebase('layout', c=c, title=title)
% include('overview_calls', c=c, ov=ov, chart=chart, hours=hours, windows=windows, window=window)
<div class="grid">
<section class="card" aria-labelledby="health">
  <h2 id="health">Plugin health</h2>
  <p class="meta">Since the configuration was loaded.</p>
  <ul class="plain">
  % for p in health:
    <li>
    % if p.healthy:
      <span class="badge ok">ok</span>
    % else:
      <span class="badge error">problems</span>
    % end
      <a href="{{c.url('/calls', plugin=p.plugin)}}">{{p.plugin}}</a>
      % for kind, n in sorted(p.problems.items()):
      · {{n}} {{kind}}
      % end
      % if p.breaker_open_for is not None:
      · <strong>circuit breaker open</strong> ({{'%.0f' % p.breaker_open_for}} s left)
      % elif p.breaker_trips:
      · breaker opened {{p.breaker_trips}}×
      % end
    </li>
  % end
  % if not health:
    <li>No plugin is enabled.</li>
  % end
  </ul>
</section>
<section class="card" aria-labelledby="configuration">
  <h2 id="configuration">Configuration</h2>
  <dl class="pairs">
    <dt>File</dt><dd><code>{{config.path}}</code></dd>
    <dt>Loaded</dt><dd><time datetime="{{h.iso(config.loaded_at)}}">{{h.when(config.loaded_at)}}</time></dd>
    <dt>Last reload</dt>
    % if config.refused:
    <dd><span class="badge error">refused</span> at {{h.when(config.refused[0])}}: {{config.refused[1]}} (the configuration above still runs)</dd>
    % else:
    <dd>no reload refused</dd>
    % end
    <dt>Plugins</dt><dd><a href="{{c.url('/plugins')}}">{{', '.join(config.plugins) or 'none'}}</a>{{'; in shadow: ' + ', '.join(config.shadow) if config.shadow else ''}}</dd>
    <dt>Store</dt><dd><code>{{config.store}}</code></dd>
  </dl>
</section>
% for mounted, panel in panels:
<section class="card panel" aria-label="{{mounted.page.title}}">
  <h2><a href="{{c.base}}{{mounted.path}}">{{mounted.page.title}}</a></h2>
  % if panel is None:
  <p class="flash error">This panel failed; the server log has the details.</p>
  % else:
  {{!panel}}
  % end
</section>
% end
</div>
